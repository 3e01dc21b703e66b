"""Where attachment content (and raw MIME) is kept: never on Kafka, only its key is.

Keys are content-addressed (``<workspace>/<sha256>/<safe name>``), so a redelivered
message stores the same bytes under the same key and nothing grows. File names from
the outside world pass through ``safe_filename`` and the final path is checked to stay
inside the store's root.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import unicodedata
import uuid
from pathlib import Path
from typing import Final, Protocol

MAX_FILENAME_CHARS: Final = 120
_UNSAFE_CHARS = re.compile(r"[^\w.\- ()+,=@]+", re.UNICODE)


class UnsafeFilenameError(ValueError):
    """A file name that tries to leave its directory (path separators, ``..``, NUL)."""


def check_filename(name: str) -> None:
    """Refuse names that try path traversal or carry control characters."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UnsafeFilenameError("the file name contains control characters")
    if "/" in name or "\\" in name:
        raise UnsafeFilenameError("the file name contains a path separator")
    if name.strip() in ("..", "."):
        raise UnsafeFilenameError("the file name is a relative path")
    if re.match(r"^[A-Za-z]:", name):
        raise UnsafeFilenameError("the file name is a drive path")


def safe_filename(name: str | None, *, fallback: str = "attachment") -> str:
    """A plain, portable file name: no separators, no leading dots, bounded length."""
    if not name:
        return fallback
    normalized = unicodedata.normalize("NFKC", name)
    base = re.split(r"[/\\]", normalized)[-1]
    cleaned = _UNSAFE_CHARS.sub("_", base).strip(" .")
    cleaned = re.sub(r"_+", "_", cleaned)
    if not cleaned or set(cleaned) <= {"_", "."}:
        return fallback
    if len(cleaned) > MAX_FILENAME_CHARS:
        stem, dot, suffix = cleaned.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            cleaned = stem[: MAX_FILENAME_CHARS - len(suffix) - 1] + "." + suffix
        else:
            cleaned = cleaned[:MAX_FILENAME_CHARS]
    return cleaned


class AttachmentStore(Protocol):
    async def put(self, workspace_id: uuid.UUID, filename: str, content: bytes) -> str:
        """Store ``content``; return its key (stable for the same bytes and name)."""
        ...

    async def get(self, key: str) -> bytes:
        """The content stored under ``key``; KeyError if there is none."""
        ...


def content_key(workspace_id: uuid.UUID, filename: str, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    return f"{workspace_id}/{digest}/{safe_filename(filename)}"


class DirectoryAttachmentStore:
    """Attachments as files under one directory (a volume in production)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            raise KeyError(key)
        root = self.root.resolve()
        path = (root / Path(*parts)).resolve()
        if not path.is_relative_to(root):
            raise KeyError(key)
        return path

    async def put(self, workspace_id: uuid.UUID, filename: str, content: bytes) -> str:
        key = content_key(workspace_id, filename, content)
        path = self._path(key)
        await asyncio.to_thread(_write_once, path, content)
        return key

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise KeyError(key) from exc


def _write_once(path: Path, content: bytes) -> None:
    if path.exists():
        return  # content-addressed: the same key always holds the same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class MemoryAttachmentStore:
    """In-memory store for tests and the contract kit."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    async def put(self, workspace_id: uuid.UUID, filename: str, content: bytes) -> str:
        key = content_key(workspace_id, filename, content)
        self.items[key] = content
        return key

    async def get(self, key: str) -> bytes:
        return self.items[key]
