"""Structured logging: JSON lines through structlog, stdlib loggers routed the same way."""

from __future__ import annotations

import logging
import re
import sys

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
# Fields that hold a credential: blanked whatever ``log_pii`` says.
SECRET_KEYS = frozenset({"password", "token", "authorization", "secret", "api_key"})
# A credential a client put in a URL (``/v1/ws?token=…``, ``?hub.verify_token=…``,
# ``?X-Amz-Signature=…``): the value of any parameter whose name ends like one.
CREDENTIAL_PARAMETER = re.compile(
    r"(?<![\w.%-])([\w.-]*(?:token|key|secret|signature|sig|password|passwd|pwd|jwt|auth"
    r"|credentials?)=)[^&\s\"'#;]*",
    re.IGNORECASE,
)
# A JWT anywhere (header.payload.signature, base64url; the header always starts "eyJ").
JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")


def redact_credentials(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    """Keep credentials out of logs whatever ``log_pii`` says: fields named like one,
    and credentials inside strings (uvicorn logs each WebSocket handshake, and when
    enabled each request, with its query string)."""
    for key, value in list(event_dict.items()):
        if key in SECRET_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str):
            value = CREDENTIAL_PARAMETER.sub(r"\1[redacted]", value)
            event_dict[key] = JWT.sub("[redacted]", value)
    return event_dict


def redact_pii(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    """Keep customer data out of logs: drop message bodies, mask emails and phone
    numbers in every string value."""
    for key, value in list(event_dict.items()):
        if key in CONTENT_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str):
            event_dict[key] = PHONE.sub("[phone]", EMAIL.sub("[email]", value))
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
