"""Web chat's origin allow-list: which sites may embed a workspace's widget.

An origin is ``scheme://host[:port]`` (http or https; the default port is dropped), or
``scheme://*.host[:port]`` for every subdomain of ``host``. Policy is pure here; the
table is read and written at the edges (``load_allowed_origins``/``save_allowed_origins``).

Semantics: a browser's ``Origin`` header that is ingest's own origin (the widget's
chat page and the demo page live there) is always allowed; any other is allowed when
it is on the workspace's list. An empty list means "any site" where
``any_when_unlisted`` holds (dev mode by default) and "only ingest's own pages"
elsewhere. A request without an ``Origin`` header is not a browser's cross-site call
and is not judged here (the session token still is).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import WebChatSettingsRow, utcnow

MAX_ORIGINS: Final = 100
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST: Final = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")


class InvalidOriginError(ValueError):
    pass


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lower case; IPv6 without brackets; "*.x" for a wildcard entry
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"

    def covers(self, other: Origin) -> bool:
        """Whether this allow-list entry admits the (concrete) origin ``other``."""
        if self.scheme != other.scheme or self.port != other.port:
            return False
        if self.host.startswith("*."):
            return other.host.endswith(self.host[1:])
        return self.host == other.host


def parse_origin(value: str, *, wildcard: bool = False) -> Origin:
    """``scheme://host[:port]`` as an ``Origin``; ``InvalidOriginError`` otherwise."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidOriginError(f"{value!r} is not scheme://host[:port]") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidOriginError(f"{value!r}: the scheme must be http or https")
    if (
        not parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in text
        or "#" in text
        or parts.username is not None
        or parts.password is not None
    ):
        raise InvalidOriginError(f"{value!r} is not scheme://host[:port] (no path, no query)")
    host = (parts.hostname or "").lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidOriginError(f"{value!r}: not an IPv6 address") from exc
    elif not _HOST.match(host) or (host.startswith("*.") and not wildcard):
        raise InvalidOriginError(f"{value!r}: not a host name")
    if port == 0:
        raise InvalidOriginError(f"{value!r}: port 0")
    return Origin(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


def normalize_origin(value: str) -> str:
    """An allow-list entry in its one spelling (lower case, default port dropped)."""
    return str(parse_origin(value, wildcard=True))


def normalize_origins(values: Iterable[str]) -> list[str]:
    """Entries normalized and deduplicated, in the order given."""
    return list(dict.fromkeys(normalize_origin(v) for v in values))


def is_own_origin(origin: str, *, host_header: str | None, public_base_url: str | None) -> bool:
    """Whether the browser's ``Origin`` is the service's own: the host (and port) the
    request was sent to, or the public base URL's origin."""
    try:
        seen = parse_origin(origin)
    except InvalidOriginError:
        return False
    if public_base_url:
        try:
            parts = urlsplit(public_base_url)
            if seen == parse_origin(f"{parts.scheme}://{parts.netloc}"):
                return True
        except InvalidOriginError:
            pass
    if not host_header:
        return False
    try:
        target = urlsplit(f"//{host_header.strip()}")
        port = target.port
    except ValueError:
        return False
    # Behind a TLS-terminating proxy the scheme differs; host and port decide.
    return (target.hostname or "").lower() == seen.host and (
        port if port is not None else _DEFAULT_PORTS[seen.scheme]
    ) == seen.port


@dataclass(frozen=True)
class OriginPolicy:
    """A workspace's allowed origins and what an empty list means."""

    allowed: tuple[str, ...]
    any_when_unlisted: bool

    @property
    def open(self) -> bool:
        return not self.allowed and self.any_when_unlisted

    def allows(self, origin: str) -> bool:
        """Whether a site at ``origin`` (not ingest's own) may use the chat."""
        if self.open:
            return True
        try:
            seen = parse_origin(origin)
        except InvalidOriginError:  # "null" (sandboxed frames, files) and odd values
            return False
        return any(parse_origin(entry, wildcard=True).covers(seen) for entry in self.allowed)

    def frame_ancestors(self) -> str | None:
        """The CSP ``frame-ancestors`` directive for the chat page; None: any site."""
        if self.open:
            return None
        return " ".join(["frame-ancestors", "'self'", *self.allowed])


class WebChatSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_origins: list[str] = Field(
        max_length=MAX_ORIGINS,
        description="Sites the widget may be embedded in and the chat API called from, as "
        "`scheme://host[:port]` (or `scheme://*.host` for its subdomains). Ingest's own "
        "origin is always allowed.",
        examples=[["https://shop.acme.example", "https://*.acme.example"]],
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        try:
            return normalize_origins(values)
        except InvalidOriginError as exc:
            raise ValueError(str(exc)) from exc


class WebChatSettingsOut(BaseModel):
    allowed_origins: list[str] = Field(description="Normalized, in the order saved.")
    any_origin_when_unlisted: bool = Field(
        description="What an empty list means on this deployment: any site (true, dev "
        "mode's default) or only ingest's own pages (false)."
    )
    updated_at: datetime | None = Field(description="Last saved; null: never saved.")


async def load_allowed_origins(session: AsyncSession, workspace_id: uuid.UUID) -> list[str]:
    row = await session.get(WebChatSettingsRow, workspace_id)
    return list(row.allowed_origins) if row is not None else []


async def save_allowed_origins(
    session: AsyncSession, workspace_id: uuid.UUID, origins: list[str]
) -> WebChatSettingsRow:
    row = await session.get(WebChatSettingsRow, workspace_id)
    if row is None:
        row = WebChatSettingsRow(workspace_id=workspace_id, allowed_origins=[])
        session.add(row)
    row.allowed_origins = normalize_origins(origins)
    row.updated_at = utcnow()
    return row
