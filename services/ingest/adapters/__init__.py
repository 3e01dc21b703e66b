"""Channel adapters of the ingest service."""
