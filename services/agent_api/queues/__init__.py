"""queues domain of the agent API: depth and waits."""
