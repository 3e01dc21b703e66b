"""supervisor domain of the agent API: the wall's snapshot."""
