"""conversations domain of the agent API."""
