"""Email header values threading needs: message ids, subjects, reply tokens.

``Message-ID``, ``In-Reply-To`` and ``References`` hold ``<id>`` tokens (RFC 5322
§3.6.4); mailers are sloppy with them, so ids are taken as the bracketed tokens, or as
bare ``x@y`` words when a mailer dropped the brackets.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from email.utils import make_msgid
from typing import Final

MAX_MESSAGE_ID_CHARS: Final = 900
MAX_REFERENCES: Final = 50
REPLY_TOKEN_ALPHABET: Final = "abcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105 - not a secret
REPLY_TOKEN_LENGTH: Final = 16

_BRACKETED = re.compile(r"<([^<>\s]+)>")
_BARE = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")
_TOKEN = re.compile(rf"^[{REPLY_TOKEN_ALPHABET}]{{{REPLY_TOKEN_LENGTH}}}$")
# Reply and forward markers in the languages mailers use most, with counters
# ("Re[2]:", "AW(3):") and the full-width colon some East Asian clients write.
_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:re|fw|fwd|aw|wg|sv|vs|antw|odp|tr|rif|ref|réf|enc|res|vá|ynt|atb)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*",  # ASCII or full-width colon
    re.IGNORECASE,
)


def message_ids(value: str | None) -> tuple[str, ...]:
    """The ``<id>`` tokens of a header value, in order, without duplicates."""
    if not value:
        return ()
    found = _BRACKETED.findall(value)
    if not found:
        found = [word.strip(",;") for word in value.split() if _BARE.match(word.strip(",;"))]
    ids: list[str] = []
    for raw in found:
        msg_id = f"<{raw}>"
        if len(msg_id) <= MAX_MESSAGE_ID_CHARS and msg_id not in ids:
            ids.append(msg_id)
    return tuple(ids)


def first_message_id(value: str | None) -> str | None:
    ids = message_ids(value)
    return ids[0] if ids else None


def references_for_reply(
    parent_references: tuple[str, ...], parent_id: str | None
) -> tuple[str, ...]:
    """``References`` of a reply: the parent's references plus the parent (RFC 5322),
    keeping the thread root and the newest ids when the chain gets long."""
    chain = [ref for ref in parent_references if ref != parent_id]
    if parent_id:
        chain.append(parent_id)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return tuple(chain)


def thread_root(
    message_id: str | None, in_reply_to: tuple[str, ...], references: tuple[str, ...]
) -> str | None:
    """The id of the message that started the thread, as far as the headers know."""
    if references:
        return references[0]
    if in_reply_to:
        return in_reply_to[0]
    return message_id


def normalize_subject(subject: str | None) -> str:
    """The subject without Re:/Fwd: markers, whitespace collapsed, case folded."""
    text = " ".join((subject or "").split())
    while True:
        stripped = _SUBJECT_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text.casefold()


def reply_subject(subject: str | None) -> str:
    """``Re: <subject>`` once, however many markers the subject had."""
    original = " ".join((subject or "").split())
    stripped = original
    while True:
        shorter = _SUBJECT_PREFIX.sub("", stripped, count=1)
        if shorter == stripped:
            break
        stripped = shorter
    return f"Re: {stripped}" if stripped else "Re: your message"


def new_reply_token() -> str:
    return "".join(secrets.choice(REPLY_TOKEN_ALPHABET) for _ in range(REPLY_TOKEN_LENGTH))


def split_address(address: str) -> tuple[str, str | None, str]:
    """``support+tok@x`` → ``("support", "tok", "x")``; no tag → tag None."""
    local, _, domain = address.rpartition("@")
    base, plus, tag = local.partition("+")
    return base, (tag if plus else None), domain


def base_address(address: str) -> str:
    base, _, domain = split_address(address.lower())
    return f"{base}@{domain}"


def reply_token_of(address: str) -> str | None:
    """The reply token of a ``support+<token>@…`` address, if it looks like one of ours."""
    _, tag, _ = split_address(address.lower())
    if tag and _TOKEN.match(tag):
        return tag
    return None


def address_with_token(address: str, token: str) -> str:
    base, _, domain = split_address(address)
    return f"{base}+{token}@{domain}"


def new_message_id(from_address: str) -> str:
    """Our own ``Message-ID``, in the sending address's domain."""
    _, _, domain = split_address(from_address)
    return make_msgid(domain=domain or None)


def bounded_id(prefix: str, value: str, *, limit: int = 200) -> str:
    """``prefix+value`` if it fits in ``limit`` characters, else a hash of ``value``."""
    if len(prefix) + len(value) <= limit:
        return prefix + value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
