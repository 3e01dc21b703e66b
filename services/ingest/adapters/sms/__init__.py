"""SMS adapters (Twilio Programmable Messaging)."""
