"""router: threads inbound messages into conversations and gives each one owner."""
