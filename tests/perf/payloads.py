"""Signed provider webhooks as ingest receives them: web chat (session token), SMS (Twilio
signature) and email (Mailgun signature), 0.5-4 KB each, as raw HTTP/1.1 requests."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from services.ingest.adapters.email.mailgun import sign_for_test
from services.ingest.adapters.sms.twilio import signed_request_headers
from services.ingest.adapters.webchat import ChatSession, issue_session_token

WORDS = "order parcel invoice refund delivery account password shipping address thanks".split()


def text_of(size: int, rng: random.Random, *, prefix: str = "") -> str:
    words: list[str] = [prefix] if prefix else []
    length = len(prefix)
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


@dataclass(frozen=True)
class WebhookSpec:
    """What the load generator needs to sign requests the way each provider would."""

    workspace_id: str
    chat_secret: str
    sms_account_id: str
    sms_auth_token: str
    sms_number: str
    public_base_url: str
    mail_account_id: str
    mail_key: str
    mail_recipient: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookSpec:
        return cls(**data)


def http_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chat_request(spec: WebhookSpec, session: str, text: str, *, path: str | None = None) -> bytes:
    token, _ = issue_session_token(
        ChatSession(session, uuid.UUID(spec.workspace_id), "Customer"),
        secret=spec.chat_secret,
        ttl=timedelta(hours=2),
    )
    body = json.dumps({"text": text, "client_message_id": uuid.uuid4().hex}).encode()
    return http_request(
        "POST",
        path or f"/v1/webchat/sessions/{session}/messages",
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        body,
    )


def sms_request(spec: WebhookSpec, index: int, text: str, *, path: str | None = None) -> bytes:
    webhook = f"/v1/channels/twilio/{spec.sms_account_id}"
    sid = "SM" + uuid.uuid4().hex
    fields = {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": f"+1555{index % 10_000_000:07d}",
        "To": spec.sms_number,
        "Body": text,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    headers = signed_request_headers(spec.sms_auth_token, spec.public_base_url + webhook, fields)
    return http_request("POST", path or webhook, headers, urlencode(fields).encode())


def email_request(spec: WebhookSpec, index: int, text: str, *, path: str | None = None) -> bytes:
    webhook = f"/v1/channels/mailgun/{spec.mail_account_id}"
    sender = f"customer{index}@example.com"
    subject = f"Question {index}"
    headers_list = [
        ["From", f"Customer <{sender}>"],
        ["To", spec.mail_recipient],
        ["Subject", subject],
        ["Message-Id", f"<bench-{uuid.uuid4().hex}@example.com>"],
    ]
    fields = {
        **sign_for_test(spec.mail_key, token=uuid.uuid4().hex * 2),
        "recipient": spec.mail_recipient,
        "sender": sender,
        "from": f"Customer <{sender}>",
        "subject": subject,
        "body-plain": text,
        "stripped-text": text,
        "message-headers": json.dumps(headers_list),
    }
    return http_request(
        "POST",
        path or webhook,
        {"Content-Type": "application/x-www-form-urlencoded"},
        urlencode(fields).encode(),
    )


def mixed_requests(
    spec: WebhookSpec, count: int, *, seed: int = 7, echo_path: str | None = None
) -> list[bytes]:
    """``count`` requests: 60 % web chat, 20 % SMS, 20 % email; text 0.5-4 KB (SMS ≤ 1.5 KB).

    With ``echo_path`` the same requests go to that path (the echo baseline)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible load, not secrets
    requests: list[bytes] = []
    for index in range(count):
        kind = rng.random()
        if kind < 0.6:
            text = text_of(rng.randint(500, 3900), rng)
            session = f"wcs_{rng.getrandbits(128):032x}"
            requests.append(chat_request(spec, session, text, path=echo_path))
        elif kind < 0.8:
            text = text_of(rng.randint(400, 1500), rng)
            requests.append(sms_request(spec, index, text, path=echo_path))
        else:
            text = text_of(rng.randint(500, 3500), rng)
            requests.append(email_request(spec, index, text, path=echo_path))
    return requests
