"""Provider secrets by reference: the database stores ``env:NAME`` or ``file:/path``,
never the secret itself (Kubernetes mounts secrets as env vars or files)."""

from __future__ import annotations

import os
from pathlib import Path


class SecretReferenceError(ValueError):
    """A secret reference that cannot be resolved (unknown scheme, unset, unreadable)."""


def resolve_secret(reference: str | None) -> str | None:
    """The secret a reference names; None for no reference."""
    if reference is None or not reference.strip():
        return None
    scheme, _, name = reference.partition(":")
    if scheme == "env":
        value = os.environ.get(name)
        if not value:
            raise SecretReferenceError(f"environment variable {name} is not set")
        return value
    if scheme == "file":
        try:
            return Path(name).read_text().strip()
        except OSError as exc:
            raise SecretReferenceError(f"secret file {name} is not readable") from exc
    raise SecretReferenceError(f"unknown secret reference scheme {scheme!r} (use env: or file:)")
