"""ingest: channel adapters in, the outbound dispatcher out."""
