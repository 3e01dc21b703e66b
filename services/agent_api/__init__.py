"""agent_api: REST + WebSocket for agents, supervisors and integrations."""
