"""HTML form bodies (``multipart/form-data``, ``application/x-www-form-urlencoded``).

Providers post inbound email as forms. ``multipart/form-data`` is MIME (RFC 7578), so
it is read with the stdlib ``email`` parser rather than a hand-made one; values stay
bytes because the provider says per field which charset it used.
"""

from __future__ import annotations

import email
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.policy import HTTP
from urllib.parse import parse_qsl

from shared.channels.protocol import ChannelRequestError


class _FormPartMessage(EmailMessage):
    """A form part whose content is kept as sent, even when it is itself a message.

    The ``email`` parser would parse a ``message/rfc822`` part (e.g. a raw email
    uploaded as a file) into a nested message and lose its bytes; reporting message
    parts as opaque keeps them, the real type stays in the ``Content-Type`` header.
    """

    def get_content_type(self) -> str:
        kind = super().get_content_type()
        return "application/octet-stream" if kind.startswith("message/") else kind

    def get_content_maintype(self) -> str:
        return self.get_content_type().split("/")[0]


_FORM_POLICY = HTTP.clone(message_factory=_FormPartMessage)


@dataclass(frozen=True)
class FormPart:
    name: str
    value: bytes
    filename: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FormData:
    parts: tuple[FormPart, ...]

    def get(self, name: str) -> FormPart | None:
        """The field ``name`` (a plain field first, else an uploaded file of that name)."""
        fields = [p for p in self.parts if p.name == name]
        return next((p for p in fields if p.filename is None), fields[0] if fields else None)

    def text(self, name: str, *, charset: str = "utf-8") -> str | None:
        part = self.get(name)
        if part is None:
            return None
        try:
            return part.value.decode(charset)
        except UnicodeDecodeError as exc:
            raise ChannelRequestError(
                422, f"The form field {name!r} is not valid {charset}."
            ) from exc

    def files(self) -> list[FormPart]:
        return [p for p in self.parts if p.filename is not None]


def parse_form(body: bytes, content_type: str) -> FormData:
    """The fields of a form body; 415 for other content types, 400 if malformed."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChannelRequestError(400, "The form body is not valid.") from exc
        return FormData(tuple(FormPart(name, value.encode()) for name, value in pairs))
    if kind != "multipart/form-data":
        raise ChannelRequestError(
            415, "Send multipart/form-data or application/x-www-form-urlencoded."
        )
    if "boundary=" not in content_type.lower():
        raise ChannelRequestError(400, "The multipart body has no boundary.")
    try:
        message = email.message_from_bytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
            policy=_FORM_POLICY,
        )
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise ChannelRequestError(400, "The multipart body could not be parsed.") from exc
    if message.defects or not message.is_multipart():
        raise ChannelRequestError(400, "The multipart body is malformed.")
    parts: list[FormPart] = []
    for part in message.get_payload():
        if not isinstance(part, Message) or part.defects:
            raise ChannelRequestError(400, "A part of the multipart body is malformed.")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ChannelRequestError(400, "A part of the multipart body has no field name.")
        payload = part.get_payload(decode=True)
        parts.append(
            FormPart(
                name=name,
                value=payload if isinstance(payload, bytes) else b"",
                filename=part.get_filename(),
                content_type=_declared_type(part),
                headers={k.lower(): str(v) for k, v in part.items()},
            )
        )
    return FormData(tuple(parts))


def _declared_type(part: Message) -> str | None:
    declared = part.get("Content-Type")
    if declared is None:
        return None
    return str(declared).split(";", 1)[0].strip().lower() or None
