"""What a channel account may hold, checked before it is stored.

Ingest finds an account by id (the webhook URL) or by ``(channel, address)`` (the SMTP
listener) and compares addresses lower case; an account is only useful if its address
is stored the way those lookups and the outbound adapters expect it. These rules are
pure: agent_api applies them without importing ingest or building any adapter.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import PurePosixPath
from typing import Any, Final

from shared.channels.identities import InvalidIdentityError, normalize_email, normalize_phone
from shared.channels.registry import ENTRY_POINT_GROUP
from shared.events import Channel

# The adapters omniroute ships (services/ingest/app.py's BUILTIN_ADAPTERS) and the channel
# each serves; a unit test keeps this equal to what ingest's registry builds. A
# third-party adapter's channel is known only once its factory has built it, which only
# ingest does.
BUILTIN_ADAPTER_CHANNELS: Final[dict[str, Channel]] = {
    "webchat": Channel.WEBCHAT,
    "email": Channel.EMAIL,
    "sendgrid": Channel.EMAIL,
    "mailgun": Channel.EMAIL,
    "twilio": Channel.SMS,
    "meta": Channel.SOCIAL,
}
# Built-in adapters that take no provider webhook: the SMTP listener matches mail by
# recipient address, the web chat widget opens sessions by workspace slug.
ADAPTERS_WITHOUT_WEBHOOK: Final = frozenset({"email", "webchat"})
WEBHOOK_PATH_PREFIX: Final = "/v1/channels"

ADAPTER_NAME: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
# omniroute's own configuration (JWT and session secrets, the database URL) is never a
# provider secret; a workspace admin must not be able to point an adapter at it.
RESERVED_ENV_PREFIX: Final = "OMNI_"
_SHORT_CODE: Final = re.compile(r"^\d{5,6}$")
_E164: Final = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_ADDRESS_LENGTH: Final = 320
MAX_SETTINGS_BYTES: Final = 16 * 1024


class InvalidAccountError(ValueError):
    """A value a channel account may not hold; the message says why."""


def installed_adapter_names() -> set[str]:
    """Adapter names ingest can serve: the built-ins and every installed entry point.

    Read from the packages' metadata; no adapter code is imported.
    """
    return set(BUILTIN_ADAPTER_CHANNELS) | {p.name for p in entry_points(group=ENTRY_POINT_GROUP)}


def check_adapter(channel: Channel, adapter: str) -> str:
    """``adapter`` if it is installed and (for a built-in) serves ``channel``."""
    if not ADAPTER_NAME.match(adapter):
        raise InvalidAccountError(
            f"adapter {adapter!r} is not an adapter name (lower-case letters, digits, "
            "'-' and '_', starting with a letter)"
        )
    installed = installed_adapter_names()
    if adapter not in installed:
        raise InvalidAccountError(
            f"no channel adapter {adapter!r} is installed; installed: {sorted(installed)}"
        )
    served = BUILTIN_ADAPTER_CHANNELS.get(adapter)
    if served is not None and served is not channel:
        fitting = sorted(n for n, c in BUILTIN_ADAPTER_CHANNELS.items() if c is channel)
        raise InvalidAccountError(
            f"adapter {adapter!r} serves channel {served.value}, not {channel.value}; "
            f"built-in adapters of {channel.value}: {fitting}"
        )
    return adapter


def normalize_account_address(channel: Channel, address: str) -> str:
    """Our address on ``channel`` as ingest looks it up (lower case) and adapters use it.

    Email: the bare address, lower case. SMS: E.164 (``+14155550100``; spaces, dashes
    and brackets dropped) or a 5-6 digit short code. Social and web chat: an id or
    name, trimmed and lower case, without spaces.
    """
    try:
        if channel is Channel.EMAIL:
            return normalize_email(address)
        if channel is Channel.SMS:
            number = normalize_phone(address)
            if _E164.match(number) or _SHORT_CODE.match(number):
                return number
            raise InvalidAccountError(
                f"not an SMS sender: {address!r}; use E.164 (+ country code and number, "
                "e.g. +14155550100) or a 5-6 digit short code"
            )
    except InvalidIdentityError as exc:
        raise InvalidAccountError(str(exc)) from exc
    value = address.strip().lower()
    if not value or len(value) > MAX_ADDRESS_LENGTH:
        raise InvalidAccountError(f"the address must be 1-{MAX_ADDRESS_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidAccountError(f"the address {address!r} contains spaces or control characters")
    return value


def check_secret_ref(reference: str) -> str:
    """``env:NAME`` or ``file:/absolute/path``, as ``shared.channels.secrets`` resolves
    them; never omniroute's own ``OMNI_…`` variables."""
    scheme, _, name = reference.partition(":")
    if scheme == "env" and _ENV_NAME.match(name):
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise InvalidAccountError(
                f"secret_ref may not name omniroute's own configuration ({RESERVED_ENV_PREFIX}…)"
            )
        return reference
    if (
        scheme == "file"
        and PurePosixPath(name).is_absolute()
        and name == name.strip()
        and all(c.isprintable() for c in name)
    ):
        return reference
    raise InvalidAccountError(
        "secret_ref must be env:NAME (an environment variable of ingest) or "
        "file:/absolute/path (a mounted secret file); it names the secret, never holds it"
    )


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The adapter's per-account settings: a JSON object of at most 16 KiB."""
    try:
        size = len(json.dumps(settings, separators=(",", ":"), allow_nan=False).encode())
    except ValueError as exc:
        raise InvalidAccountError("settings must be plain JSON") from exc
    if size > MAX_SETTINGS_BYTES:
        raise InvalidAccountError(
            f"settings are {size} bytes as JSON; at most {MAX_SETTINGS_BYTES} are kept"
        )
    return settings


def webhook_path(adapter: str, account_id: object) -> str | None:
    """Where a provider delivers to the account on ingest; None for the adapters that
    take no webhook (the SMTP listener, web chat)."""
    if adapter in ADAPTERS_WITHOUT_WEBHOOK:
        return None
    return f"{WEBHOOK_PATH_PREFIX}/{adapter}/{account_id}"
