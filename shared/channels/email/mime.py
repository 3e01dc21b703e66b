"""MIME parsing with the stdlib ``email`` package (``policy.default``).

``parse_mime`` turns a raw RFC 5322 message into a ``ParsedEmail``; ``parsed_email``
builds the same from a provider's already-parsed fields (SendGrid, Mailgun). Anything
that cannot be read faithfully — broken multipart structure, an unknown charset, a
file name that tries path traversal, too many attachments — is a ``ChannelRequestError``
(HTTP 4xx, SMTP 5xx), never a crash.
"""

from __future__ import annotations

import codecs
import email
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import errors as email_errors
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from typing import Final

from shared.channels.attachments import UnsafeFilenameError, check_filename
from shared.channels.email.headers import first_message_id, message_ids
from shared.channels.email.text import html_to_text
from shared.channels.identities import InvalidIdentityError, normalize_email
from shared.channels.protocol import ChannelLimits, ChannelRequestError

# Structural defects after which the parse cannot be trusted to be the message sent.
FATAL_DEFECTS: Final[tuple[type[email_errors.MessageDefect], ...]] = (
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.MultipartInvariantViolationDefect,
    email_errors.InvalidMultipartContentTransferEncodingDefect,
    email_errors.FirstHeaderLineIsContinuationDefect,
    email_errors.InvalidBase64LengthDefect,
)
ADDRESS_HEADERS: Final = ("From", "To", "Cc", "Subject", "Reply-To")
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*]+)(?:\*[^?]*)?\?[QqBb]\?", re.ASCII)
_AUTO_PRECEDENCE: Final = frozenset({"bulk", "junk", "list", "auto_reply"})


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class ParsedEmail:
    sender_address: str
    sender_name: str | None
    subject: str
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    text: str
    date: datetime | None = None
    auto_submitted: bool = False
    attachments: tuple[ParsedAttachment, ...] = field(default=())
    stripped_text: str | None = None  # a provider's own quote stripping, if it did it


def malformed(detail: str) -> ChannelRequestError:
    return ChannelRequestError(422, detail, smtp_reply=f"550 5.6.0 {detail}")


def unknown_charset(charset: str, where: str) -> ChannelRequestError:
    detail = f"Unknown character set {charset!r} in {where}."
    return ChannelRequestError(422, detail, smtp_reply=f"554 5.6.1 {detail}")


def check_charset(charset: str | None, where: str) -> str:
    """The charset if Python knows it; ChannelRequestError otherwise."""
    name = (charset or "us-ascii").strip().strip('"')
    try:
        codecs.lookup(name)
    except (LookupError, ValueError) as exc:
        raise unknown_charset(name, where) from exc
    return name


def _check_encoded_words(name: str, value: str) -> None:
    if name.title() not in ADDRESS_HEADERS:
        return
    for charset in _ENCODED_WORD_CHARSET.findall(value):
        check_charset(charset, f"the {name} header")


def _check_header_charsets(msg: Message) -> None:
    for name, value in msg.raw_items():
        _check_encoded_words(name, str(value))


def _defects(part: Message) -> list[email_errors.MessageDefect]:
    return [d for d in part.defects if isinstance(d, FATAL_DEFECTS)]


def _addresses(msg: Message, name: str) -> tuple[str, ...]:
    header = msg.get(name)
    if header is None:
        return ()
    found: list[str] = []
    for address in getattr(header, "addresses", ()):
        try:
            found.append(normalize_email(address.addr_spec))
        except InvalidIdentityError:
            continue
    return tuple(found)


def _sender(msg: Message) -> tuple[str, str | None]:
    header = msg.get("From")
    if header is None:
        raise malformed("The message has no From header.")
    for address in getattr(header, "addresses", ()):
        try:
            return normalize_email(address.addr_spec), (address.display_name or None)
        except InvalidIdentityError:
            continue
    raise malformed("The From header holds no valid address.")


def _date(msg: Message) -> datetime | None:
    value = msg.get("Date")
    if value is None:
        return None
    try:
        return parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None


def is_auto_submitted(msg: Message) -> bool:
    """RFC 3834 ``Auto-Submitted`` (or the older ``Precedence``/``X-Autoreply``)."""
    auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(msg.get("Precedence", "")).strip().lower()
    return (
        auto not in ("", "no")
        or precedence in _AUTO_PRECEDENCE
        or msg.get("X-Autoreply") is not None
        or msg.get("X-Autorespond") is not None
    )


def headers_from_text(raw_headers: str) -> EmailMessage:
    """Header block text (SendGrid's ``headers`` field) as a message without body."""
    parser = HeaderParser(policy=default_policy)
    parsed = parser.parsestr(raw_headers.strip() + "\n\n")
    if not isinstance(parsed, EmailMessage):  # pragma: no cover - policy.default gives these
        raise malformed("The headers could not be parsed.")
    return parsed


def headers_from_pairs(pairs: Sequence[tuple[str, str]]) -> EmailMessage:
    """Name/value pairs (Mailgun's ``message-headers``) as a message without body."""
    msg = EmailMessage(policy=default_policy)
    for name, value in pairs:
        if not name or "\n" in name or "\r" in name or ":" in name:
            raise malformed(f"Invalid header name {name!r}.")
        clean = " ".join(str(value).split())
        _check_encoded_words(name, clean)
        try:
            msg[name] = clean
        except (ValueError, TypeError) as exc:
            raise malformed(f"Invalid {name} header.") from exc
    return msg


def parsed_email(
    headers: Message,
    *,
    text: str,
    html: str | None = None,
    attachments: Sequence[ParsedAttachment] = (),
    stripped_text: str | None = None,
    limits: ChannelLimits,
) -> ParsedEmail:
    """A ``ParsedEmail`` from headers plus bodies a provider already decoded."""
    _check_header_charsets(headers)
    sender, name = _sender(headers)
    if len(attachments) > limits.max_attachments:
        raise too_many_attachments(limits)
    for attachment in attachments:
        _check_name(attachment.filename)
    body = text if text.strip() else (html_to_text(html) if html else "")
    return ParsedEmail(
        sender_address=sender,
        sender_name=name,
        subject=" ".join(str(headers.get("Subject", "")).split()),
        message_id=first_message_id(str(headers.get("Message-ID", "")) or None),
        in_reply_to=message_ids(str(headers.get("In-Reply-To", "")) or None),
        references=message_ids(str(headers.get("References", "")) or None),
        to=_addresses(headers, "To"),
        cc=_addresses(headers, "Cc"),
        text=body,
        date=_date(headers),
        auto_submitted=is_auto_submitted(headers),
        attachments=tuple(attachments),
        stripped_text=stripped_text,
    )


def too_many_attachments(limits: ChannelLimits) -> ChannelRequestError:
    detail = f"More than {limits.max_attachments} attachments."
    return ChannelRequestError(413, detail, smtp_reply=f"552 5.3.4 {detail}")


def _check_name(name: str) -> None:
    try:
        check_filename(name)
    except UnsafeFilenameError as exc:
        raise malformed(f"Attachment name refused: {exc}.") from exc


def parse_mime(raw: bytes, *, limits: ChannelLimits) -> ParsedEmail:
    """Parse a raw message; ChannelRequestError for anything malformed or unreadable."""
    if len(raw) > limits.max_message_bytes:
        detail = f"The message is larger than {limits.max_message_bytes} bytes."
        raise ChannelRequestError(413, detail, smtp_reply=f"552 5.3.4 {detail}")
    if not raw.strip():
        raise malformed("The message is empty.")
    try:
        msg = email.message_from_bytes(raw, policy=default_policy)
        return _parse_message(msg, limits=limits)
    except ChannelRequestError:
        raise
    except (RecursionError, ValueError, LookupError, TypeError, IndexError, AttributeError) as exc:
        raise malformed(f"The message could not be parsed ({type(exc).__name__}).") from exc


def _parse_message(msg: Message, *, limits: ChannelLimits) -> ParsedEmail:
    if not isinstance(msg, EmailMessage):  # pragma: no cover - policy.default gives these
        raise malformed("The message could not be parsed.")
    for part in _own_parts(msg):
        defects = _defects(part)
        if defects:
            names = ", ".join(sorted({type(d).__name__ for d in defects}))
            raise malformed(f"Malformed MIME structure ({names}).")
    body = msg.get_body(preferencelist=("plain", "html"))
    text = ""
    html: str | None = None
    body_parts: set[int] = set()
    for candidate in (body, msg.get_body(preferencelist=("html",))):
        if candidate is not None:
            body_parts.add(id(candidate))
    if body is not None:
        charset = check_charset(body.get_content_charset(), "the message body")
        content = _text_content(body, charset)
        if body.get_content_subtype() == "html":
            html = content
        else:
            text = content
    attachments: list[ParsedAttachment] = []
    for part in _attachment_parts(msg, body_parts):
        attachments.append(_attachment(part, len(attachments) + 1))
        if len(attachments) > limits.max_attachments:
            raise too_many_attachments(limits)
    return parsed_email(msg, text=text, html=html, attachments=attachments, limits=limits)


def _decoded(part: Message) -> bytes:
    """The part's content with its transfer encoding undone; refused if undecodable."""
    payload = part.get_payload(decode=True)
    defects = _defects(part)  # decoding records its own defects on the part
    if defects:
        names = ", ".join(sorted({type(d).__name__ for d in defects}))
        raise malformed(f"A part's content cannot be decoded ({names}).")
    return payload if isinstance(payload, bytes) else b""


def _text_content(part: Message, charset: str) -> str:
    return _decoded(part).decode(charset, errors="replace")


def _attachment_parts(part: Message, body_parts: set[int]) -> Iterator[Message]:
    """Leaf parts that are not the body; an attached message counts as one part."""
    if id(part) in body_parts:
        return
    if part.get_content_type() == "message/rfc822":
        yield part
        return
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _attachment_parts(sub, body_parts)
        return
    yield part


def _own_parts(part: Message) -> Iterator[Message]:
    """The message's parts, not descending into attached messages (their own business)."""
    yield part
    if part.get_content_type() == "message/rfc822":
        return
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _own_parts(sub)


def _attachment(part: Message, number: int) -> ParsedAttachment:
    raw_name = part.get_filename()
    if raw_name is not None:
        _check_name(raw_name)
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        inner = part.get_payload()
        message = inner[0] if isinstance(inner, list) and inner else None
        content = message.as_bytes() if isinstance(message, Message) else b""
        default_name = f"message-{number}.eml"
    else:
        if part.get_content_maintype() == "text":
            check_charset(part.get_content_charset(), f"attachment {number}")
        content = _decoded(part)
        default_name = f"attachment-{number}"
    content_id = part.get("Content-ID")
    return ParsedAttachment(
        filename=raw_name or default_name,
        content_type=content_type,
        content=content,
        content_id=str(content_id).strip() if content_id is not None else None,
        inline=part.get_content_disposition() == "inline",
    )
