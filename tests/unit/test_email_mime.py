"""MIME parsing, header ids, subjects, reply stripping and bounces (stdlib ``email``)."""

from __future__ import annotations

import email
import uuid
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from urllib.parse import quote

import pytest

from shared.channels.attachments import MemoryAttachmentStore
from shared.channels.email.headers import (
    base_address,
    message_ids,
    normalize_subject,
    references_for_reply,
    reply_subject,
    reply_token_of,
    thread_root,
)
from shared.channels.email.inbound import normalize_inbound_email, provider_message_id
from shared.channels.email.mime import parse_mime
from shared.channels.email.receipts import delivery_receipts
from shared.channels.email.text import html_to_text, strip_quoted_reply
from shared.channels.protocol import (
    ChannelAccount,
    ChannelContext,
    ChannelLimits,
    ChannelRequestError,
    DeliveryState,
)
from shared.events import Channel

LIMITS = ChannelLimits(max_message_bytes=64 * 1024, max_attachments=3)
SUPPORT = "support@demo.omniroute.dev"


def sample_email(
    *,
    sender: str = "Grace Hopper <grace@example.com>",
    to: str = SUPPORT,
    subject: str = "Order 1234 is late",
    message_id: str | None = "<c1@example.com>",
    in_reply_to: str | None = None,
    references: str | None = None,
    text: str = "Hello, where is my order?",
    attachments: tuple[tuple[str, bytes, str], ...] = (),
) -> bytes:
    """A well-formed email as a mailer sends it (SMTP line endings)."""
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    if message_id:
        mail["Message-ID"] = message_id
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
    if references:
        mail["References"] = references
    mail.set_content(text)
    for filename, content, content_type in attachments:
        maintype, _, subtype = content_type.partition("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes()


def account(address: str = SUPPORT) -> ChannelAccount:
    return ChannelAccount(
        id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
        channel=Channel.EMAIL,
        adapter="email",
        address=address,
    )


def refused(raw: bytes, *, limits: ChannelLimits = LIMITS) -> ChannelRequestError:
    with pytest.raises(ChannelRequestError) as caught:
        parse_mime(raw, limits=limits)
    return caught.value


# A corpus of bad input: every case is refused with a clear 4xx and an SMTP 5xx.
MALFORMED: dict[str, bytes] = {
    "multipart without boundary": (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b"Content-Type: multipart/mixed\r\n\r\nno parts at all\r\n"
    ),
    "boundary never found": (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b'Content-Type: multipart/mixed; boundary="xyz"\r\n\r\nplain text, no parts\r\n'
    ),
    "unterminated multipart": (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b'Content-Type: multipart/mixed; boundary="xyz"\r\n\r\n--xyz\r\n'
        b"Content-Type: text/plain\r\n\r\ntruncated here"
    ),
    "no From header": b"To: support@demo.omniroute.dev\r\nSubject: hi\r\n\r\nhello\r\n",
    "From without an address": b"From: nobody at all\r\nTo: x@y.example\r\n\r\nhello\r\n",
    "headers continue nothing": b" folded first line\r\nFrom: a@example.com\r\n\r\nx\r\n",
    "undecodable base64": (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--q\r\n"
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJDRUZHS\r\n--q--\r\n"
    ),
    "empty": b"\r\n\r\n",
}

UNSAFE_NAMES = ["../../etc/passwd", "..\\..\\boot.ini", "a/b.txt", "C:evil.exe", "x\x00.pdf", ".."]


def test_a_multipart_email_is_parsed_with_its_attachments_and_encoded_headers() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Jurgen@Example.COM>\r\n"
        b"To: Support <support@demo.omniroute.dev>, other@example.com\r\n"
        b"Cc: boss@example.com\r\n"
        b"Subject: =?iso-8859-1?q?Caf=E9?= =?utf-8?b?4piV?= order\r\n"
        b"Message-ID: <abc@example.com>\r\n"
        b"Date: Mon, 02 Feb 2026 10:00:00 +0100\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b'--outer\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 au lait, s'il vous pla=EEt.\r\n"
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Caf\xc3\xa9</p>\r\n--alt--\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''Re%C3%A7u.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
        b"--outer\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
        b'Content-Disposition: inline; filename="logo.png"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--outer--\r\n"
    )

    parsed = parse_mime(raw, limits=LIMITS)

    assert parsed.sender_address == "jurgen@example.com"
    assert parsed.sender_name == "Jürgen Müller"
    assert parsed.subject == "Café☕ order"  # RFC 2047: no space between adjacent words
    assert parsed.message_id == "<abc@example.com>"
    assert parsed.to == ("support@demo.omniroute.dev", "other@example.com")
    assert parsed.cc == ("boss@example.com",)
    assert parsed.text.strip() == "Café au lait, s'il vous plaît."
    assert parsed.date is not None
    assert [(a.filename, a.content_type, len(a.content)) for a in parsed.attachments] == [
        ("Reçu.pdf", "application/pdf", 9),
        ("logo.png", "image/png", 8),
    ]
    assert parsed.attachments[1].inline
    assert parsed.attachments[1].content_id == "<logo@x>"


def test_an_html_only_email_becomes_text() -> None:
    raw = (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{}</style></head><body><p>Hello&nbsp;there</p>"
        b"<p>Line<br>two</p><script>evil()</script></body></html>\r\n"
    )

    parsed = parse_mime(raw, limits=LIMITS)

    assert parsed.text == "Hello there\n\nLine\ntwo"
    assert "evil" not in parsed.text


def test_an_attached_email_is_one_attachment() -> None:
    inner = sample_email(subject="forwarded", message_id="<inner@example.com>")
    outer = EmailMessage(policy=SMTP_POLICY)
    outer["From"] = "a@example.com"
    outer["To"] = SUPPORT
    outer["Subject"] = "Fwd: forwarded"
    outer.set_content("See below")
    inner_msg = email.message_from_bytes(inner, policy=default_policy)
    outer.add_attachment(inner_msg)

    parsed = parse_mime(outer.as_bytes(), limits=LIMITS)

    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    assert b"<inner@example.com>" in parsed.attachments[0].content


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_mime_is_refused_with_a_clear_reason(name: str) -> None:
    error = refused(MALFORMED[name])

    assert 400 <= error.status < 500
    assert error.smtp_reply.startswith("5")
    assert error.detail


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        pytest.param(
            b"From: a@example.com\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nhi\r\n",
            "body",
            id="body charset",
        ),
        pytest.param(
            b"From: a@example.com\r\nSubject: =?x-martian?q?hello?=\r\n\r\nhi\r\n",
            "Subject",
            id="encoded-word charset",
        ),
        pytest.param(
            b"From: a@example.com\r\n"
            b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
            b"Content-Type: text/plain\r\n\r\nhi\r\n--q\r\n"
            b"Content-Type: text/csv; charset=x-unknown\r\n"
            b'Content-Disposition: attachment; filename="a.csv"\r\n'
            b"\r\na,b\r\n--q--\r\n",
            "attachment",
            id="text attachment charset",
        ),
    ],
)
def test_an_unknown_charset_is_refused(raw: bytes, where: str) -> None:
    error = refused(raw)

    assert error.status == 422
    assert "character set" in error.detail
    assert where in error.detail
    assert error.smtp_reply.startswith("554 5.6.1")


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_attachment_names_that_try_path_traversal_are_refused(name: str) -> None:
    raw = (
        b"From: a@example.com\r\nTo: support@demo.omniroute.dev\r\n"
        b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--q\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''"
        + quote(name, safe="").encode()
        + b"\r\n\r\nx\r\n--q--\r\n"
    )

    error = refused(raw)

    assert error.status == 422
    assert "Attachment name refused" in error.detail


def test_an_oversized_message_is_refused_as_too_large() -> None:
    raw = sample_email(text="x" * (LIMITS.max_message_bytes + 10))

    error = refused(raw)

    assert error.status == 413
    assert error.smtp_reply.startswith("552")


def test_too_many_attachments_are_refused() -> None:
    files = tuple((f"f{i}.txt", b"x", "text/plain") for i in range(LIMITS.max_attachments + 1))

    error = refused(sample_email(attachments=files))

    assert error.status == 413
    assert error.smtp_reply.startswith("552")


def test_message_ids_are_read_however_mailers_write_them() -> None:
    assert message_ids("<a@x> <b@y>\r\n <c@z>") == ("<a@x>", "<b@y>", "<c@z>")
    assert message_ids("<a@x>, <a@x>") == ("<a@x>",)
    assert message_ids("a@x b@y") == ("<a@x>", "<b@y>")
    assert message_ids("garbage") == ()
    assert message_ids(None) == ()
    assert thread_root("<m3>", ("<m2>",), ("<m1>", "<m2>")) == "<m1>"
    assert thread_root("<m3>", ("<m2>",), ()) == "<m2>"
    assert thread_root("<m3>", (), ()) == "<m3>"


def test_references_of_a_reply_keep_the_root_and_the_newest() -> None:
    assert references_for_reply(("<a>", "<b>"), "<c>") == ("<a>", "<b>", "<c>")
    assert references_for_reply((), None) == ()
    long_chain = tuple(f"<{i}>" for i in range(80))
    reply = references_for_reply(long_chain, "<new>")
    assert reply[0] == "<0>"
    assert reply[-1] == "<new>"
    assert len(reply) == 50


@pytest.mark.parametrize(
    ("subject", "normalized"),
    [
        ("Order 1234", "order 1234"),
        ("Re: Order 1234", "order 1234"),
        ("RE: Fwd: re:  Order   1234", "order 1234"),
        ("AW: WG: Order 1234", "order 1234"),
        ("Re[2]: Order 1234", "order 1234"),
        ("Re\uff1a Order 1234", "order 1234"),  # full-width colon
        ("Regarding: Order 1234", "regarding: order 1234"),
        ("", ""),
    ],
)
def test_subjects_are_normalized_for_the_fallback(subject: str, normalized: str) -> None:
    assert normalize_subject(subject) == normalized


def test_reply_subjects_have_one_marker() -> None:
    assert reply_subject("Order 1234") == "Re: Order 1234"
    assert reply_subject("Re: RE: Order 1234") == "Re: Order 1234"
    assert reply_subject(None) == "Re: your message"


def test_reply_tokens_are_read_from_plus_addresses() -> None:
    assert reply_token_of("support+abcdefghijkmnpqr@demo.omniroute.dev") == "abcdefghijkmnpqr"
    assert reply_token_of("Support+ABCDEFGHIJKMNPQR@demo.omniroute.dev") == "abcdefghijkmnpqr"
    assert reply_token_of("support+sales@demo.omniroute.dev") is None
    assert reply_token_of("support@demo.omniroute.dev") is None
    assert base_address("Support+x@Demo.omniroute.dev") == "support@demo.omniroute.dev"


def test_quoted_replies_and_signatures_are_stripped_for_display_only() -> None:
    text = (
        "Yes, that fixed it. Thanks!\n\n"
        "On Mon, Feb 2, 2026 at 10:00 AM Support <support@demo.omniroute.dev> wrote:\n"
        "> Please restart the router.\n> \n> Ada\n\n"
        "-- \nGrace Hopper\nExample Corp"
    )

    assert strip_quoted_reply(text) == "Yes, that fixed it. Thanks!"
    assert strip_quoted_reply("> only a quote") == "> only a quote"
    assert html_to_text("<div>a</div><div>b &amp; c</div>") == "a\n\nb & c"


async def test_the_normalized_message_keeps_the_original_and_stores_content() -> None:
    raw = sample_email(
        to="Support <support+abcdefghijkmnpqr@demo.omniroute.dev>",
        text="New part.\n\nOn Mon, Feb 2, 2026 Ada wrote:\n> old part\n",
        in_reply_to="<ours@demo.omniroute.dev>",
        references="<c0@example.com> <ours@demo.omniroute.dev>",
        attachments=(("log.txt", b"line 1\n", "text/plain"),),
    )
    store = MemoryAttachmentStore()
    ctx = ChannelContext(account=account(), attachments=store)

    message = await normalize_inbound_email(parse_mime(raw, limits=LIMITS), ctx, raw=raw)

    assert message.text == "New part."
    assert message.email is not None
    assert "> old part" in message.email.original_text
    assert message.email.reply_token == "abcdefghijkmnpqr"
    assert message.email.in_reply_to == ("<ours@demo.omniroute.dev>",)
    assert message.thread_key == "email:<c0@example.com>"
    assert message.provider_message_id == "<c1@example.com>"
    [attachment] = message.attachments
    assert await store.get(attachment.storage_key) == b"line 1\n"
    assert message.email.raw_storage_key is not None
    assert await store.get(message.email.raw_storage_key) == raw


async def test_an_email_not_for_the_account_is_refused() -> None:
    raw = sample_email(to="someone@elsewhere.example")
    ctx = ChannelContext(account=account(), attachments=MemoryAttachmentStore())

    with pytest.raises(ChannelRequestError) as caught:
        await normalize_inbound_email(parse_mime(raw, limits=LIMITS), ctx)

    assert caught.value.status == 422


def test_without_a_message_id_the_dedupe_id_is_a_stable_hash() -> None:
    raw = sample_email(message_id=None)
    first = provider_message_id(parse_mime(raw, limits=LIMITS))
    again = provider_message_id(parse_mime(raw, limits=LIMITS))
    other = provider_message_id(parse_mime(sample_email(message_id=None, text="x"), limits=LIMITS))

    assert first.startswith("sha256:")
    assert first == again
    assert first != other


def test_a_bounce_maps_to_a_failed_delivery_receipt() -> None:
    dsn = (
        b"From: MAILER-DAEMON@mx.example\r\nTo: support@demo.omniroute.dev\r\n"
        b"Subject: Undelivered Mail\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
        b"--r\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example\r\n\r\n"
        b"Final-Recipient: rfc822; grace@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"--r\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"From: support@demo.omniroute.dev\r\nMessage-ID: <ours.1@demo.omniroute.dev>\r\n\r\n"
        b"--r--\r\n"
    )

    [receipt] = delivery_receipts(email.message_from_bytes(dsn, policy=default_policy))

    assert receipt.provider_message_id == "<ours.1@demo.omniroute.dev>"
    assert receipt.state is DeliveryState.FAILED
    assert receipt.reason is not None
    assert "user unknown" in receipt.reason
    assert delivery_receipts(email.message_from_bytes(sample_email(), policy=default_policy)) == []
