"""The agent console and the supervisor wall: static pages served by agent_api."""
