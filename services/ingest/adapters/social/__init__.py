"""Social adapters (Meta: Messenger, Instagram, WhatsApp Cloud API)."""
