"""What a channel account may hold, checked before it is stored.

Ingest finds an account by id (the webhook URL) or by ``(channel, address)`` (the SMTP
listener) and compares addresses lower case; an account is only useful if its address
is stored the way those lookups and the outbound adapters expect it. These rules are
pure: agent_api applies them without importing ingest or building any adapter.
"""

from __future__ import annotations

import json
import re
import uuid
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
_SHORT_CODE: Final = re.compile(r"^[0-9]{5,6}$")
_E164: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
# What a written SMS sender may contain: ASCII digits, "+" and the separators people
# write numbers with. normalize_phone drops anything else (letters too) and keeps any
# Unicode digit, which suits what customers send but not a sender we store.
_SMS_SENDER_CHARACTERS: Final = re.compile(r"^[0-9+ ().-]+$")
MAX_ADDRESS_LENGTH: Final = 320
MAX_SETTINGS_BYTES: Final = 16 * 1024
MAX_SECRET_REF_LENGTH: Final = 500  # channel_accounts.secret_ref


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
            if not _SMS_SENDER_CHARACTERS.match(address.strip()):
                raise InvalidAccountError(
                    f"not an SMS sender: {address!r}; only ASCII digits, '+', spaces, "
                    "'-', '.' and brackets"
                )
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


def check_secret_ref(
    reference: str, *, secrets_dir: PurePosixPath | None, workspace_id: uuid.UUID
) -> str:
    """The reference to store for a secret a workspace admin names: ``file:<path>`` of a
    file the operator placed in ``<secrets_dir>/<workspace_id>/``, given relative to that
    directory (``file:twilio``) or absolute, and returned absolute (``file:/…/twilio``),
    as ``shared.channels.secrets`` resolves it.

    The check is lexical: agent_api need not have the files mounted, and an admin cannot
    create files or links there. ``env:`` references are refused: environment variables
    are the operator's, shared by every workspace, so only an operator sets them (directly
    in the table). Without ``secrets_dir`` no reference is accepted at all.
    """
    if secrets_dir is None:
        raise InvalidAccountError(
            "this deployment accepts no secret_ref through the API: the operator must "
            "configure OMNI_CHANNEL_SECRETS_DIR (the directory of per-workspace secret "
            "files ingest reads) first; an account that needs no secret can omit it"
        )
    workspace_dir = secrets_dir / str(workspace_id)
    usage = (
        f"secret_ref must be file:<name>, a file the operator placed in this workspace's "
        f"secrets directory ({workspace_dir}/), e.g. file:twilio; it names the secret, "
        "never holds it"
    )
    scheme, _, name = reference.partition(":")
    if scheme == "env":
        raise InvalidAccountError(
            "env: references are set by the operator only, not through the API; " + usage
        )
    if (
        scheme != "file"
        or not name
        or name != name.strip()
        or not all(c.isprintable() for c in name)
        or ".." in name.split("/")
    ):
        raise InvalidAccountError(usage)
    # PurePosixPath drops "." segments and repeated slashes; ".." was refused above, so
    # no segment can climb out of the workspace's directory.
    path = PurePosixPath(name)
    if not path.is_absolute():
        path = workspace_dir / path
    if path == workspace_dir or not path.is_relative_to(workspace_dir):
        raise InvalidAccountError(usage)
    stored = f"file:{path}"
    if len(stored) > MAX_SECRET_REF_LENGTH:
        raise InvalidAccountError(
            f"secret_ref is {len(stored)} characters as stored; at most "
            f"{MAX_SECRET_REF_LENGTH} are kept"
        )
    return stored


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
