"""contacts domain of the agent API: the unified customer profile."""
