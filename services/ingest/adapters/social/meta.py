"""Meta: one webhook for Messenger, Instagram and the WhatsApp Cloud API.

``GET /v1/channels/meta/{account_id}`` answers Meta's subscription handshake
(``hub.mode=subscribe``, ``hub.verify_token`` equal to the account's ``verify_token``
setting → ``hub.challenge`` echoed with 200, else 403). ``POST`` on the same URL carries
events signed with ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``.

Events understood (everything else is acknowledged and ignored):

- Messenger / Instagram DMs: ``entry[].messaging[]`` with ``message.mid`` (echoes of our
  own sends skipped); keyed by the sender, ``messenger:<PSID>`` / ``instagram:<IGSID>``.
- WhatsApp messages: ``entry[].changes[].value.messages[]`` (``id`` is the wamid); keyed
  by the sender ``whatsapp:+<wa_id>``. ``value.statuses[]`` become delivery receipts.
- Public post comments: ``entry[].changes[]`` with ``field == "feed"``, ``item ==
  "comment"``, ``verb == "add"``; one "social post" conversation per post
  (thread key ``post:<post_id>``), the commenter ``facebook:<user id>``. Instagram
  comments (``object == "instagram"``, ``field == "comments"``): thread key
  ``post:<media id>``, the commenter ``instagram-comment:<IGSID>``.

Replies to a post conversation are public comment replies under the customer's latest
comment (``reply_to_provider_message_id``): ``POST /{comment-id}/comments`` on Facebook,
``POST /{ig-comment-id}/replies`` on Instagram, ``{"message": <text>}``.

The account: ``address`` is the page id (or the WhatsApp phone number id); ``secret_ref``
resolves to ``<app secret>:<access token>``; settings hold ``verify_token`` and may hold
``page_id``, ``instagram_account_id`` and ``whatsapp_phone_number_id`` (the ids sent from).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog

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
    SendResult,
    Verification,
)
from shared.channels.sending import (
    RetryPolicy,
    post_with_retries,
)
from shared.events import Channel, MessageReceived, OutboundMessageRequested, Sender

log = structlog.get_logger(__name__)

SIGNATURE_HEADER: Final = "x-hub-signature-256"
MESSENGER: Final = "messenger"
INSTAGRAM: Final = "instagram"
WHATSAPP: Final = "whatsapp"
FACEBOOK: Final = "facebook"  # a commenter on a page post (no DM address)
INSTAGRAM_COMMENT: Final = "instagram-comment"  # a commenter on an Instagram media
POST_THREAD_PREFIX: Final = "post:"
_GRAPH_ID: Final = re.compile(r"[0-9A-Za-z_.-]{1,200}")  # a node id, safe in a Graph path

_WHATSAPP_STATES: Final = {
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.DELIVERED,
    "failed": DeliveryState.FAILED,
}


@dataclass(frozen=True)
class MetaConfig:
    graph_base_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    timeout_seconds: float = 10.0


def credentials(account: ChannelAccount) -> tuple[str, str]:
    """``(app secret, access token)`` from the account's secret ``appsecret:token``."""
    app_secret, _, token = (account.secret or "").partition(":")
    if not app_secret.strip() or not token.strip():
        raise ChannelRequestError(
            401, "No app-secret:access-token is configured for this Meta account.", permanent=False
        )
    return app_secret.strip(), token.strip()


def signature_of(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def split_address(address: str) -> tuple[str, str]:
    platform, _, ident = address.partition(":")
    if not ident.strip():
        raise PermanentDeliveryError(f"{address!r} is no Meta recipient address")
    return platform, ident.strip()


class MetaAdapter(BaseChannelAdapter):
    name = "meta"
    channel = Channel.SOCIAL

    def __init__(self, runtime: ChannelRuntime) -> None:
        try:
            self.config = runtime.service(MetaConfig)
        except LookupError:
            self.config = MetaConfig()

    # Subscription handshake -----------------------------------------------------------

    def challenge(self, query: dict[str, str], account: ChannelAccount) -> str:
        """The ``hub.challenge`` to echo, or ChannelRequestError 403."""
        expected = str(account.settings.get("verify_token") or "")
        given = query.get("hub.verify_token", "")
        if (
            query.get("hub.mode") != "subscribe"
            or not expected
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            raise ChannelRequestError(403, "The subscription verification was refused.")
        return query.get("hub.challenge", "")

    # Inbound ----------------------------------------------------------------------------

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:
        account = ctx.require_account()
        app_secret, _ = credentials(account)
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature:
            raise ChannelRequestError(401, "The X-Hub-Signature-256 header is missing.")
        expected = signature_of(app_secret, request.body)
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            raise ChannelRequestError(403, "The X-Hub-Signature-256 signature does not match.")
        return Verification()

    def _payload(self, request: InboundRequest) -> dict[str, Any]:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ChannelRequestError(400, "The webhook body is not valid JSON.") from exc
        if not isinstance(data, dict):
            raise ChannelRequestError(422, "The webhook body is not a JSON object.")
        return data

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        account = ctx.require_account()
        data = self._payload(request)
        platform = INSTAGRAM if data.get("object") == "instagram" else MESSENGER
        messages: list[MessageReceived] = []
        for entry in _dicts(data.get("entry")):
            for event in _dicts(entry.get("messaging")):
                found = self._dm(event, platform, account, ctx)
                if found is not None:
                    messages.append(found)
            for change in _dicts(entry.get("changes")):
                value = change.get("value")
                if not isinstance(value, dict):
                    continue
                if change.get("field") == "messages" and "messaging_product" in value:
                    messages.extend(self._whatsapp(value, account, ctx))
                elif change.get("field") == "feed":
                    found = self._comment(value, account, ctx)
                    if found is not None:
                        messages.append(found)
                elif change.get("field") == "comments" and platform == INSTAGRAM:
                    found = self._instagram_comment(value, account, ctx)
                    if found is not None:
                        messages.append(found)
        return messages

    def _text(self, text: Any, ctx: ChannelContext) -> str:
        value = text if isinstance(text, str) else ""
        if len(value) > ctx.limits.max_text_chars:
            raise ChannelRequestError(413, "The message text is too long.")
        return value

    def _message(
        self,
        account: ChannelAccount,
        ctx: ChannelContext,
        *,
        pid: Any,
        sender: str,
        thread_key: str,
        text: str,
        name: str | None = None,
    ) -> MessageReceived:
        if not isinstance(pid, str) or not pid.strip() or len(pid.strip()) > 200:
            raise ChannelRequestError(422, "A message id is missing or invalid.")
        return MessageReceived(
            workspace_id=account.workspace_id,
            channel=self.channel,
            provider_message_id=pid.strip(),
            thread_key=thread_key[:400],
            sender=Sender(address=sender[:320], display_name=name[:200] if name else None),
            text=text,
            received_at=ctx.now,
            channel_account_id=account.id,
        )

    def _dm(
        self, event: dict[str, Any], platform: str, account: ChannelAccount, ctx: ChannelContext
    ) -> MessageReceived | None:
        message = event.get("message")
        if not isinstance(message, dict) or message.get("is_echo"):
            return None  # deliveries, reads, reactions, postbacks, our own echoes
        sender = event.get("sender")
        sender_id = str(sender.get("id") or "").strip() if isinstance(sender, dict) else ""
        if not sender_id:
            raise ChannelRequestError(422, "A message has no sender id.")
        address = f"{platform}:{sender_id}"
        return self._message(
            account,
            ctx,
            pid=message.get("mid"),
            sender=address,
            thread_key=address,
            text=self._text(message.get("text"), ctx),
        )

    def _whatsapp(
        self, value: dict[str, Any], account: ChannelAccount, ctx: ChannelContext
    ) -> list[MessageReceived]:
        names = {
            str(c.get("wa_id")): str((c.get("profile") or {}).get("name") or "")
            for c in _dicts(value.get("contacts"))
            if isinstance(c.get("profile") or {}, dict)
        }
        found: list[MessageReceived] = []
        for message in _dicts(value.get("messages")):
            wa_id = str(message.get("from") or "").strip().lstrip("+")
            if not wa_id:
                raise ChannelRequestError(422, "A WhatsApp message has no sender.")
            kind = message.get("type")
            body = message.get(kind) if isinstance(kind, str) else None
            text = body.get("body") if kind == "text" and isinstance(body, dict) else None
            if text is None and isinstance(body, dict):
                text = body.get("caption")
            address = f"{WHATSAPP}:+{wa_id}"
            found.append(
                self._message(
                    account,
                    ctx,
                    pid=message.get("id"),
                    sender=address,
                    thread_key=address,
                    text=self._text(text if text is not None else f"[{kind}]", ctx),
                    name=names.get(wa_id) or None,
                )
            )
        return found

    def _comment(
        self, value: dict[str, Any], account: ChannelAccount, ctx: ChannelContext
    ) -> MessageReceived | None:
        if value.get("item") != "comment" or value.get("verb") != "add":
            return None
        author = value.get("from")
        if not isinstance(author, dict) or not str(author.get("id") or "").strip():
            raise ChannelRequestError(422, "A comment has no author.")
        if str(author["id"]) == account.address:
            return None  # the page's own comment
        post_id = str(value.get("post_id") or "").strip()
        if not post_id:
            raise ChannelRequestError(422, "A comment has no post_id.")
        return self._message(
            account,
            ctx,
            pid=value.get("comment_id"),
            sender=f"{FACEBOOK}:{str(author['id']).strip()}",
            thread_key=POST_THREAD_PREFIX + post_id,
            text=self._text(value.get("message"), ctx),
            name=str(author.get("name") or "") or None,
        )

    def _instagram_comment(
        self, value: dict[str, Any], account: ChannelAccount, ctx: ChannelContext
    ) -> MessageReceived | None:
        author = value.get("from")
        if not isinstance(author, dict) or not str(author.get("id") or "").strip():
            raise ChannelRequestError(422, "A comment has no author.")
        author_id = str(author["id"]).strip()
        ours = {account.address, str(account.settings.get("instagram_account_id") or "")}
        if author_id in ours:
            return None  # the account's own comment (our replies)
        media = value.get("media")
        media_id = str(media.get("id") or "").strip() if isinstance(media, dict) else ""
        if not media_id:
            raise ChannelRequestError(422, "A comment has no media id.")
        return self._message(
            account,
            ctx,
            pid=value.get("id"),
            sender=f"{INSTAGRAM_COMMENT}:{author_id}",
            thread_key=POST_THREAD_PREFIX + media_id,
            text=self._text(value.get("text"), ctx),
            name=str(author.get("username") or "") or None,
        )

    async def map_receipt(
        self, request: InboundRequest, ctx: ChannelContext
    ) -> list[DeliveryReceipt]:
        data = self._payload(request)
        receipts: list[DeliveryReceipt] = []
        for entry in _dicts(data.get("entry")):
            for change in _dicts(entry.get("changes")):
                value = change.get("value")
                if change.get("field") != "messages" or not isinstance(value, dict):
                    continue
                for status in _dicts(value.get("statuses")):
                    state = _WHATSAPP_STATES.get(str(status.get("status") or ""))
                    wamid = str(status.get("id") or "").strip()
                    if state is None or not wamid:
                        continue
                    reason = None
                    if state is DeliveryState.FAILED:
                        errors = list(_dicts(status.get("errors")))
                        detail = (
                            errors[0].get("title") or errors[0].get("message") if errors else ""
                        )
                        code = errors[0].get("code") if errors else None
                        reason = "WhatsApp: failed" + (f" (error {code})" if code else "")
                        reason += f": {detail}" if detail else ""
                    receipts.append(
                        DeliveryReceipt(
                            provider_message_id=wamid,
                            state=state,
                            reason=reason[:500] if reason else None,
                            occurred_at=ctx.now,
                        )
                    )
        return receipts

    # Outbound ---------------------------------------------------------------------------

    def send_request(
        self, account: ChannelAccount, message: OutboundMessageRequested
    ) -> tuple[str, dict[str, Any]]:
        """The Graph path and JSON body that deliver ``message``."""
        platform, ident = split_address(message.recipient_address)
        version = self.config.api_version.strip("/")
        settings = account.settings
        if platform == WHATSAPP:
            sender_id = settings.get("whatsapp_phone_number_id") or account.address
            return f"/{version}/{sender_id}/messages", {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": ident.lstrip("+"),
                "type": "text",
                "text": {"preview_url": False, "body": message.text},
            }
        if platform in (MESSENGER, INSTAGRAM):
            sender_id = settings.get("page_id") or account.address
            if platform == INSTAGRAM and settings.get("instagram_account_id"):
                sender_id = settings["instagram_account_id"]
            return f"/{version}/{sender_id}/messages", {
                "recipient": {"id": ident},
                "messaging_type": "RESPONSE",
                "message": {"text": message.text},
            }
        if platform in (FACEBOOK, INSTAGRAM_COMMENT):
            comment_id = (message.reply_to_provider_message_id or "").strip()
            if not _GRAPH_ID.fullmatch(comment_id):
                raise PermanentDeliveryError(
                    "Not sent: there is no customer comment on this post to reply under."
                )
            edge = "comments" if platform == FACEBOOK else "replies"
            return f"/{version}/{comment_id}/{edge}", {"message": message.text}
        raise PermanentDeliveryError(f"Not sent: {platform!r} is no Meta platform omniroute knows.")

    async def send(self, message: OutboundMessageRequested, ctx: ChannelContext) -> SendResult:
        account = ctx.account
        if account is None:
            raise PermanentDeliveryError("no Meta account to send from")
        try:
            _, token = credentials(account)
        except ChannelRequestError as exc:
            raise PermanentDeliveryError(exc.detail) from exc
        path, body = self.send_request(account, message)
        url = self.config.graph_base_url.rstrip("/") + path
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=self.config.timeout_seconds
        ) as client:
            response = await post_with_retries(
                client,
                url,
                provider="Meta Graph API",
                message_id=str(message.message_id),
                policy=self._retry_policy,
                refusal=_refusal,
                json=body,
            )
        return _sent(response)

    @property
    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.config.max_attempts,
            backoff_seconds=self.config.backoff_seconds,
            max_backoff_seconds=self.config.max_backoff_seconds,
        )


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _sent(response: httpx.Response) -> SendResult:
    try:
        data: Any = response.json()
    except ValueError:
        data = {}
    pid = ""
    if isinstance(data, dict):
        pid = str(data.get("message_id") or data.get("id") or "")  # a comment reply: "id"
        wa = data.get("messages")
        if not pid and isinstance(wa, list) and wa and isinstance(wa[0], dict):
            pid = str(wa[0].get("id") or "")
    if not pid:
        raise PermanentDeliveryError("Meta accepted the message but returned no message id")
    return SendResult(provider_message_id=pid, state=DeliveryState.SENT)


def _refusal(response: httpx.Response) -> str:
    try:
        data: Any = response.json()
    except ValueError:
        data = {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code")
        return (
            f"Meta {response.status_code}"
            + (f" (error {code})" if code else "")
            + f": {error['message']}"
        )
    return f"Meta {response.status_code}: {response.text[:200]}"


def signed_request_headers(app_secret: str, body: bytes) -> dict[str, str]:
    """The headers Meta would send with ``body`` (tests, stand-ins)."""
    return {
        "X-Hub-Signature-256": signature_of(app_secret, body),
        "Content-Type": "application/json",
    }
