"""teams domain of the agent API."""
