"""Channel accounts: a workspace's addresses on its channels and their adapters."""
