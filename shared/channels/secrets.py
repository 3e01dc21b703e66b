"""Provider secrets by reference: the database stores ``env:NAME`` or ``file:/path``,
never the secret itself (Kubernetes mounts secrets as env vars or files).

Which references an account may hold is decided where it is written (the agent API
confines them to the workspace's directory under ``OMNI_CHANNEL_SECRETS_DIR``; see
``shared.channels.accounts.check_secret_ref``). Resolving here guards the process for
every reference, however it was stored: only a regular file is read, and at most
``MAX_SECRET_BYTES`` of it, so a reference to a device, a FIFO or a huge file cannot
stall or exhaust ingest.
"""

from __future__ import annotations

import os
import stat
from typing import Final

# Provider secrets are tokens and keys, a few hundred bytes; a PEM bundle fits too.
MAX_SECRET_BYTES: Final = 64 * 1024


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
        return _read_secret_file(name)
    raise SecretReferenceError(f"unknown secret reference scheme {scheme!r} (use env: or file:)")


def _read_secret_file(path: str) -> str:
    """A regular file's text, trailing whitespace stripped, refused above the cap.

    A device or FIFO is refused before it is opened (opening some devices acts), and the
    type is checked again on the opened descriptor, which is opened non-blocking, in case
    the path was swapped in between. Files under /proc
    claim to be regular with size 0, so the size is not trusted: at most one byte more
    than the cap is read.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SecretReferenceError(f"secret file {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretReferenceError(f"secret file {path} is not readable") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecretReferenceError(f"secret file {path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SecretReferenceError(f"secret file {path} is not readable") from exc
    finally:
        os.close(fd)
    if size > MAX_SECRET_BYTES:
        raise SecretReferenceError(
            f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes; not a secret"
        )
    try:
        return b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise SecretReferenceError(f"secret file {path} is not UTF-8 text") from exc
