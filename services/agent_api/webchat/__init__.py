"""Web-chat settings: the sites a workspace's widget may be used from."""
