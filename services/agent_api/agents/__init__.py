"""agents domain of the agent API."""
