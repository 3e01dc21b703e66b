"""Outgoing webhook subscriptions for integrations (e.g. CRMs)."""
