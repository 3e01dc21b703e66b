"""Structured logging: JSON lines through structlog, stdlib loggers routed the same way."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import structlog
from structlog.types import EventDict

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Digit runs with separators, as phone numbers are written; not valid IPv4 addresses
# (127.0.0.1) or valid ISO dates (2026-11-23), which operators need. Only valid ones:
# numbers shaped like them (079.123.45.67, 0701-23-45-67) are still masked.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])"
_ISO_DATE = r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?![\d-])"
PHONE = re.compile(rf"(?<![\w-])(?<!\d\.)(?!{_IPV4})(?!{_ISO_DATE})\+?\d[\d ().-]{{7,}}\d(?![\w-])")
CONTENT_KEYS = frozenset({"text", "body", "message_text"})
# Names of a credential (a field, a URL or form parameter, a JSON key): ending like one,
# or a key that is one (api_key, x-api-key, client_secret…); not every ``*_key``, as
# thread_key, replay_key, idempotency_key or a Kafka record's key are what operators
# look for.
_CREDENTIAL_NAME = (
    r"(?:[\w.-]*(?:token|secret|signature|sig|password|passwd|pwd|jwt|auth|authorization"
    r"|credentials?)(?:-\d+)?"  # x-hub-signature-256
    r"|(?:[\w.-]*[_.-])?(?:api|access|secret|private|signing|client|master|encryption"
    r"|session|subscription)[_-]?key)"
)
CREDENTIAL_FIELD = re.compile(_CREDENTIAL_NAME, re.IGNORECASE)
# Fields that hold a credential: blanked whatever ``log_pii`` says.
SECRET_KEYS = frozenset({"password", "token", "authorization", "secret", "api_key"})
# A credential in a string: a URL's (``/v1/ws?token=…``, ``?hub.verify_token=…``,
# ``?X-Amz-Signature=…``, Google's bare ``?key=…``), a keyword argument's or a repr's
# (``token='…'``), a JSON document's (``"access_token": "…"``) or a header's
# (``Authorization: Bearer …``). Quotes around the value are kept.
CREDENTIAL_PARAMETER = re.compile(
    rf"(?<![\w.%-])(?:(?P<quote>[\"']?){_CREDENTIAL_NAME}(?P=quote)[:=]|(?<=[?&])key=)\s*"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?"
    r"|(?:(?:bearer|basic)\s+)?[^&\s\"'#;]*)",
    re.IGNORECASE,
)
# Quick test before the expensive pattern: every credential name holds one of these.
_CREDENTIAL_STEMS = ("tok", "key", "secret", "sig", "pass", "pwd", "jwt", "auth", "cred")
# The password of a URL's userinfo (``postgresql://user:password@host``).
URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):[^/\s@]+@")
# A JWT anywhere (header.payload.signature, base64url; the header always starts "eyJ").
JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")
# Quick test before PHONE: a run of digits as long as the shortest phone number.
_DIGIT_RUN = re.compile(r"\d[\d ().-]{7,}\d")
# Nested values are redacted to this depth; anything deeper is dropped, not logged.
MAX_DEPTH = 6
_TOO_DEEP = "[redacted: nested too deep]"
# Fields the logging itself fills in (and structlog's bookkeeping): nothing to redact.
_OWN_FIELDS = frozenset({"timestamp", "level", "logger", "_record", "_from_structlog"})


def _blank_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return match[0][: match.start("value") - match.start()] + quote + "[redacted]" + quote


def redact_credentials_in(text: str) -> str:
    """``text`` with the credentials it holds (see the patterns above) blanked."""
    lowered = text.lower()
    if ("=" in text or ":" in text) and any(stem in lowered for stem in _CREDENTIAL_STEMS):
        text = CREDENTIAL_PARAMETER.sub(_blank_value, text)
    if "@" in text and "://" in text:
        text = URL_PASSWORD.sub(r"\1:[redacted]@", text)
    if "eyJ" in text:
        text = JWT.sub("[redacted]", text)
    return text


def mask_pii_in(text: str) -> str:
    """``text`` with email addresses and phone numbers masked."""
    if "@" in text:
        text = EMAIL.sub("[email]", text)
    if _DIGIT_RUN.search(text) is not None:
        text = PHONE.sub("[phone]", text)
    return text


def _redacted(
    value: Any, blank: Callable[[str], bool], redact: Callable[[str], str], depth: int = 0
) -> Any:
    """``value`` with the strings inside redacted and the fields ``blank`` names blanked;
    containers are copied, never changed (they may be the caller's)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(value, dict):
        return {
            k: "[redacted]"
            if isinstance(k, str) and blank(k)
            else _redacted(v, blank, redact, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [_redacted(v, blank, redact, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


@functools.lru_cache(maxsize=4096)  # field names are few; the pattern is not cheap
def _is_credential_field(name: str) -> bool:
    return name.lower() in SECRET_KEYS or CREDENTIAL_FIELD.fullmatch(name) is not None


def _is_content_field(name: str) -> bool:
    return name in CONTENT_KEYS


def redact_credentials(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    """Keep credentials out of logs whatever ``log_pii`` says: fields named like one,
    and credentials inside strings (uvicorn logs each WebSocket handshake, and when
    enabled each request, with its query string), nested values included."""
    for key, value in list(event_dict.items()):
        if key in _OWN_FIELDS:
            continue
        if _is_credential_field(key):
            event_dict[key] = "[redacted]"
        elif not isinstance(value, bool | int | float) and value is not None:
            event_dict[key] = _redacted(value, _is_credential_field, redact_credentials_in)
    return event_dict


def redact_pii(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    """Keep customer data out of logs: drop message bodies, mask emails and phone
    numbers in every string value, nested values included."""
    for key, value in list(event_dict.items()):
        if key in _OWN_FIELDS:
            continue
        if key in CONTENT_KEYS:
            event_dict[key] = "[redacted]"
        elif not isinstance(value, bool | int | float) and value is not None:
            event_dict[key] = _redacted(value, _is_content_field, mask_pii_in)
    return event_dict


def configure_logging(
    *, service: str, level: str = "INFO", json: bool = True, log_pii: bool = False
) -> None:
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # the traceback becomes text here, so the redaction below covers it too
        structlog.processors.format_exc_info,
        redact_credentials,
    ]
    if not log_pii:
        shared_processors.append(redact_pii)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=service)
