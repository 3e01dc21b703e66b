"""Twilio Programmable Messaging: inbound SMS/MMS webhooks, status callbacks, sending.

Inbound: ``POST /v1/channels/twilio/{account_id}`` (form-encoded: ``MessageSid``,
``AccountSid``, ``From``, ``To``, ``Body``, ``NumMedia``, ``MediaUrl{N}``,
``MediaContentType{N}`` and whatever Twilio adds later). Status callbacks:
``POST /v1/channels/twilio/{account_id}/status?message_id=<ours>``.

Both are signed with ``X-Twilio-Signature`` over the public URL Twilio called and
the form parameters; ``twilio.request_validator.RequestValidator`` checks it. Behind a
proxy the URL is rebuilt from the account's ``public_base_url`` setting, else
``OMNI_PUBLIC_BASE_URL``, else the URL as received.

The account: ``address`` is our number (E.164), ``secret_ref`` resolves to
``AccountSid:AuthToken``, settings may hold ``messaging_service_sid`` and
``public_base_url``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
import structlog
from twilio.request_validator import RequestValidator

from shared.channels.forms import FormData, parse_form
from shared.channels.identities import InvalidIdentityError, normalize_phone
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelAccount,
    ChannelContext,
    ChannelRequestError,
    ChannelRuntime,
    DeliveryReceipt,
    DeliveryState,
    InboundRequest,
    PermanentDeliveryError,
    ProviderResponse,
    SendResult,
    Verification,
)
from shared.channels.sending import (
    RetryPolicy,
    post_with_retries,
)
from shared.events import (
    AttachmentInfo,
    Channel,
    ConsentChange,
    MessageReceived,
    OutboundMessageRequested,
    Sender,
)

log = structlog.get_logger(__name__)

TWIML_EMPTY: Final = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
SIGNATURE_HEADER: Final = "x-twilio-signature"
STATUS_VARIANT: Final = "status"

# Twilio's default opt-out and opt-in keywords (matched on the whole, trimmed body).
OPT_OUT_KEYWORDS: Final = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
OPT_IN_KEYWORDS: Final = frozenset({"START", "YES", "UNSTOP"})

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_DELIVERED = frozenset({"delivered", "read"})
_FAILED = frozenset({"failed", "undelivered", "canceled"})


@dataclass(frozen=True)
class TwilioConfig:
    api_base_url: str = "https://api.twilio.com"
    public_base_url: str | None = None
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    timeout_seconds: float = 10.0


def consent_of(body: str, opt_out_type: str | None) -> ConsentChange | None:
    """STOP/START as Twilio reads them (``OptOutType`` when Advanced Opt-Out is on)."""
    kind = (opt_out_type or "").strip().upper()
    if kind == "STOP":
        return ConsentChange.OPT_OUT
    if kind == "START":
        return ConsentChange.OPT_IN
    word = " ".join(body.split()).upper().rstrip(".!")
    if word in OPT_OUT_KEYWORDS:
        return ConsentChange.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return ConsentChange.OPT_IN
    return None


def phone_address(raw: str) -> str:
    """E.164 when it is a number; short codes and alphanumeric senders as they came."""
    try:
        number = normalize_phone(raw)
    except InvalidIdentityError:
        return raw.strip()
    return number if _E164.match(number) else raw.strip()


def credentials(account: ChannelAccount) -> tuple[str, str]:
    """``(AccountSid, AuthToken)`` from the account's secret ``AccountSid:AuthToken``."""
    sid, _, token = (account.secret or "").partition(":")
    if not sid or not token:
        raise ChannelRequestError(
            401, "No AccountSid:AuthToken is configured for this Twilio account.", permanent=False
        )
    return sid.strip(), token.strip()


class FormParams(dict[str, list[str]]):
    """Repeated names kept; ``getlist`` is how RequestValidator reads multi-values."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def form_params(form: FormData) -> FormParams:
    params = FormParams()
    for part in form.parts:
        params.setdefault(part.name, []).append(part.value.decode("utf-8", "replace"))
    return params


class TwilioSmsAdapter(BaseChannelAdapter):
    name = "twilio"
    channel = Channel.SMS

    def __init__(self, runtime: ChannelRuntime) -> None:
        try:
            self.config = runtime.service(TwilioConfig)
        except LookupError:
            self.config = TwilioConfig()

    # Inbound ------------------------------------------------------------------------

    def public_base(self, account: ChannelAccount) -> str | None:
        base = account.settings.get("public_base_url") or self.config.public_base_url
        return str(base).rstrip("/") if base else None

    def public_url(self, request: InboundRequest, account: ChannelAccount) -> str:
        """The URL as Twilio called it: the configured public base + path and query."""
        base = self.public_base(account)
        if base is None:
            return request.url
        called = urlsplit(request.url)
        return base + called.path + (f"?{called.query}" if called.query else "")

    def _form(self, request: InboundRequest) -> FormData:
        if not request.content_type.lower().startswith("application/x-www-form-urlencoded"):
            raise ChannelRequestError(415, "Twilio webhooks are application/x-www-form-urlencoded.")
        return parse_form(request.body, request.content_type)

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        account = ctx.require_account()
        sid, token = credentials(account)
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature:
            raise ChannelRequestError(401, "The X-Twilio-Signature header is missing.")
        try:
            params = form_params(self._form(request))
        except ChannelRequestError as exc:
            raise ChannelRequestError(403, "The signed form could not be read.") from exc
        validator = RequestValidator(token)
        if not validator.validate(self.public_url(request, account), params, signature):
            raise ChannelRequestError(403, "The Twilio signature does not match.")
        sent_for = params.get("AccountSid", [sid])[0]
        if sent_for != sid:
            raise ChannelRequestError(403, "The request is for another Twilio account.")
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        if request.path_params.get("variant") == STATUS_VARIANT:
            return []  # a status callback: see map_receipt
        account = ctx.require_account()
        form = self._form(request)
        sid = (form.text("MessageSid") or form.text("SmsMessageSid") or "").strip()
        sender_raw = (form.text("From") or "").strip()
        if not sid or len(sid) > 200:
            raise ChannelRequestError(422, "MessageSid is missing or invalid.")
        if not sender_raw:
            raise ChannelRequestError(422, "From is missing.")
        if not sender_raw.isprintable():
            raise ChannelRequestError(422, "From holds control characters.")
        sender = phone_address(sender_raw)
        body = form.text("Body") or ""
        if len(body) > ctx.limits.max_text_chars:
            raise ChannelRequestError(413, "The message text is too long.")
        return [
            MessageReceived(
                workspace_id=account.workspace_id,
                channel=self.channel,
                provider_message_id=sid,
                thread_key=sender,
                sender=Sender(address=sender),
                text=body,
                received_at=ctx.now,
                channel_account_id=account.id,
                attachments=media_of(form, ctx, api_base_url=self.config.api_base_url),
                consent=consent_of(body, form.text("OptOutType")),
            )
        ]

    async def map_receipt(
        self, request: InboundRequest, ctx: ChannelContext
    ) -> list[DeliveryReceipt]:
        if request.path_params.get("variant") != STATUS_VARIANT:
            return []
        form = self._form(request)
        sid = (form.text("MessageSid") or form.text("SmsSid") or "").strip()
        status = (form.text("MessageStatus") or form.text("SmsStatus") or "").strip().lower()
        if not sid:
            raise ChannelRequestError(422, "MessageSid is missing.")
        state = receipt_state(status)
        if state is None:
            return []  # queued, sending, accepted…: nothing to tell the agent
        reason: str | None = None
        if state is DeliveryState.FAILED:
            code = (form.text("ErrorCode") or "").strip()
            detail = (form.text("ErrorMessage") or "").strip()
            reason = f"Twilio: {status}" + (f" (error {code})" if code else "")
            reason += f": {detail}" if detail else ""
        return [
            DeliveryReceipt(
                provider_message_id=sid,
                state=state,
                reason=reason[:500] if reason else None,
                occurred_at=ctx.now,
                message_id=_uuid_or_none(request.query.get("message_id")),
            )
        ]

    def acknowledge(self, messages: Sequence[MessageReceived]) -> ProviderResponse:  # noqa: ARG002
        return ProviderResponse(status=200, body=TWIML_EMPTY, content_type="text/xml")

    # Outbound -----------------------------------------------------------------------

    def status_callback(self, account: ChannelAccount, message: OutboundMessageRequested) -> str:
        base = self.public_base(account)
        if base is None:
            return ""
        return (
            f"{base}/v1/channels/{self.name}/{account.id}/{STATUS_VARIANT}"
            f"?message_id={quote(str(message.message_id))}"
        )

    def send_fields(
        self, account: ChannelAccount, message: OutboundMessageRequested
    ) -> dict[str, str]:
        fields = {"To": message.recipient_address, "Body": message.text}
        service = account.settings.get("messaging_service_sid")
        if service:
            fields["MessagingServiceSid"] = str(service)
        else:
            fields["From"] = account.address
        callback = self.status_callback(account, message)
        if callback:
            fields["StatusCallback"] = callback
        return fields

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:
        account = ctx.account
        if account is None:
            raise PermanentDeliveryError("no Twilio account to send SMS from")
        try:
            sid, token = credentials(account)
        except ChannelRequestError as exc:
            raise PermanentDeliveryError(exc.detail) from exc
        url = f"{self.config.api_base_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        fields = self.send_fields(account, message)
        async with httpx.AsyncClient(
            auth=(sid, token), timeout=self.config.timeout_seconds
        ) as client:
            response = await post_with_retries(
                client,
                url,
                provider="Twilio",
                message_id=str(message.message_id),
                policy=self._retry_policy,
                refusal=_refusal,
                data=fields,
            )
        return _sent(response)

    @property
    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.config.max_attempts,
            backoff_seconds=self.config.backoff_seconds,
            max_backoff_seconds=self.config.max_backoff_seconds,
        )


def receipt_state(status: str) -> DeliveryState | None:
    if status == "sent":
        return DeliveryState.SENT
    if status in _DELIVERED:
        return DeliveryState.DELIVERED
    if status in _FAILED:
        return DeliveryState.FAILED
    return None


def media_of(
    form: FormData, ctx: ChannelContext, *, api_base_url: str = "https://api.twilio.com"
) -> tuple[AttachmentInfo, ...]:
    """MMS media as metadata: Twilio keeps the content at ``MediaUrl{N}`` (https, or under
    the configured API base, e.g. a local stand-in); ingest's media fetcher
    (``services.ingest.media``) stores it after the webhook was answered."""
    try:
        count = int(form.text("NumMedia") or "0")
    except ValueError as exc:
        raise ChannelRequestError(422, "NumMedia is not a number.") from exc
    if count < 0 or count > ctx.limits.max_attachments:
        raise ChannelRequestError(422, f"NumMedia {count} is out of range.")
    media: list[AttachmentInfo] = []
    for index in range(count):
        url = (form.text(f"MediaUrl{index}") or "").strip()
        if not url:
            raise ChannelRequestError(422, f"MediaUrl{index} is missing.")
        local = url.startswith(api_base_url.rstrip("/") + "/")
        if not (url.startswith("https://") or local) or len(url) > 500:
            raise ChannelRequestError(422, f"MediaUrl{index} is not an https URL.")
        kind = (form.text(f"MediaContentType{index}") or "application/octet-stream").strip()
        name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or f"media-{index}"
        media.append(
            AttachmentInfo(
                filename=name[:255],
                content_type=kind[:255] or "application/octet-stream",
                size=0,  # unknown until fetched from Twilio (services.ingest.media)
                storage_key=url,
            )
        )
    return tuple(media)


def _sent(response: httpx.Response) -> SendResult:
    try:
        data: Any = response.json()
    except ValueError:
        data = {}
    sid = str(data.get("sid") or "") if isinstance(data, dict) else ""
    if not sid:
        raise PermanentDeliveryError("Twilio accepted the message but returned no sid")
    return SendResult(provider_message_id=sid, state=DeliveryState.SENT)


def _refusal(response: httpx.Response) -> str:
    try:
        data: Any = response.json()
    except ValueError:
        data = {}
    if isinstance(data, dict) and data.get("message"):
        code = data.get("code")
        return (
            f"Twilio {response.status_code}"
            + (f" (error {code})" if code else "")
            + (f": {data['message']}")
        )
    return f"Twilio {response.status_code}: {response.text[:200]}"


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def signed_request_headers(auth_token: str, url: str, params: dict[str, str]) -> dict[str, str]:
    """The headers Twilio would send with ``params`` posted to ``url`` (tests, stand-ins)."""
    signature = RequestValidator(auth_token).compute_signature(url, params)
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
