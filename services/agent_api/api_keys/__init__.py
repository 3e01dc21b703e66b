"""API keys for integrations."""
