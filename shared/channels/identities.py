"""Contact identities by kind: how an address is normalized and which channel reaches it.

One customer is one contact however they write: the email address given in a web
chat and the sender of an email are the same ``email`` identity once normalized.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Final

from shared.events import Channel, IdentityKind

KIND_OF_CHANNEL: Final[dict[Channel, IdentityKind]] = {
    Channel.EMAIL: IdentityKind.EMAIL,
    Channel.SMS: IdentityKind.PHONE,
    Channel.SOCIAL: IdentityKind.SOCIAL_HANDLE,
    Channel.WEBCHAT: IdentityKind.WEBCHAT_SESSION,
}
CHANNEL_OF_KIND: Final[dict[IdentityKind, Channel]] = {
    kind: channel for channel, kind in KIND_OF_CHANNEL.items()
}
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class InvalidIdentityError(ValueError):
    pass


def kind_of_channel(channel: Channel) -> IdentityKind:
    return KIND_OF_CHANNEL[channel]


def normalize_email(address: str) -> str:
    """``"Grace" <Grace@Example.COM>`` → ``grace@example.com``; ValueError if not one."""
    _, bare = parseaddr(address.strip())
    bare = bare.strip().lower()
    if len(bare) > 320 or not _EMAIL.match(bare):
        raise InvalidIdentityError(f"not an email address: {address!r}")
    return bare


def normalize_phone(number: str) -> str:
    digits = re.sub(r"[^\d+]", "", number)
    if digits.count("+") > 1 or (digits.count("+") == 1 and not digits.startswith("+")):
        raise InvalidIdentityError(f"not a phone number: {number!r}")
    if len(digits.lstrip("+")) < 5:
        raise InvalidIdentityError(f"not a phone number: {number!r}")
    return digits


def normalize_identity(kind: IdentityKind, address: str) -> str:
    if kind is IdentityKind.EMAIL:
        return normalize_email(address)
    if kind is IdentityKind.PHONE:
        return normalize_phone(address)
    value = address.strip()
    if not value:
        raise InvalidIdentityError("empty identity")
    return value
