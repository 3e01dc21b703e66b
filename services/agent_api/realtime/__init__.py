"""realtime domain of the agent API."""
