"""routing domain of the agent API: the policy document."""
