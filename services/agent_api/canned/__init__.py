"""Canned responses and resolution outcome codes."""
