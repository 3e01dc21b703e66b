"""Routing: the policy document, pure assignment policy, and its database engine.

The router and agent_api both route (new conversations, queue draining, transfers,
escalations, reassignment of an offline owner's conversations), so it lives here.
"""
