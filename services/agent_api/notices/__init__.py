"""Proactive notices: a message to a set of contacts, each on their preferred channel."""
