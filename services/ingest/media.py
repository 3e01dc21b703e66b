"""Provider-hosted media fetched after the webhook was answered (Twilio MMS).

Twilio's inbound webhook names each picture or video by ``MediaUrl{N}``; the content
stays at Twilio. Fetching it inside the webhook would make Twilio wait (and retry)
for downloads, so the webhook publishes the message with the URLs (attachment
metadata whose ``storage_key`` is the URL, size 0) and answers. The router, once it
stored the message, asks for its media on ``omni.media.v1`` (through its outbox: never
before the message is stored, never lost after). This consumer of ``omni.media.v1``
(its own group; a topic of its own, so it does not read every channel's inbound
messages) then downloads each item with the account's
``AccountSid:AuthToken`` (HTTP Basic, httpx), refuses items above the size limit or of
types we do not keep, stores the rest in the attachment store and publishes
``MessageAttachmentsStored`` on ``omni.inbound.v1`` with the message's own key, so the
router, which reads that partition in order, updates the message it has already stored.

Nothing is lost: the offset is committed only after the result was published; 429,
5xx and network errors are retried with backoff, then the whole record is retried by
the consume loop and finally dead-lettered (Twilio keeps the media, so it can be
replayed). A refusal that retrying cannot fix (404, too large, a type we do not keep, a
URL that is not this account's media) is recorded on the message with its reason, and
the item stays at Twilio's URL.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import httpx
import structlog

from services.ingest.accounts import AccountDirectory
from services.ingest.adapters.sms.twilio import credentials
from shared.bus.consumer import dead_letter_record
from shared.bus.port import Bus, BusRecord
from shared.channels.attachments import AttachmentStore, safe_filename
from shared.channels.protocol import ChannelRequestError
from shared.channels.sending import RETRYABLE_STATUSES, RetryPolicy, backoff_delay
from shared.correlation import correlation_scope
from shared.events import (
    AttachmentInfo,
    Channel,
    Event,
    EventDecodeError,
    MediaFetchFailure,
    MessageAttachmentsStored,
    MessageReceived,
    Topic,
    decode_event,
    encode_event,
    inbound_key,
)
from shared.metrics import DEAD_LETTERED_RECORDS

log = structlog.get_logger(__name__)

EVENT_SOURCE: Final = "omniroute/ingest/twilio-media"
ACCEPTED_MAJOR_TYPES: Final = frozenset({"image", "audio", "video"})
ACCEPTED_TYPES: Final = frozenset(
    {
        "application/pdf",
        "text/vcard",
        "text/x-vcard",
        "text/directory",
        "text/calendar",
        "text/plain",
    }
)


class MediaRefusedError(Exception):
    """The item cannot be fetched, and retrying would not change that."""


class MediaUnavailableError(Exception):
    """Twilio stayed unavailable (429/5xx/network) for every attempt."""


@dataclass(frozen=True)
class MediaFetchConfig:
    api_base_url: str = "https://api.twilio.com"
    max_bytes: int = 5 * 1024 * 1024
    timeout_seconds: float = 20.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def accepted_type(content_type: str) -> bool:
    major, _, _ = content_type.partition("/")
    return major in ACCEPTED_MAJOR_TYPES or content_type in ACCEPTED_TYPES


def media_prefix(api_base_url: str, account_sid: str) -> str:
    """Where this account's media lives; nothing else is fetched with its credentials."""
    return f"{api_base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/"


def is_account_media(url: str, prefix: str) -> bool:
    """Under the account's prefix, with no dot segments that would climb out of it."""
    segments = urlsplit(url).path.split("/")
    return url.startswith(prefix) and "." not in segments and ".." not in segments


def stored_name(filename: str, content_type: str) -> str:
    """Twilio names media by id (``ME…``): give the stored file its type's extension."""
    name = safe_filename(filename, fallback="media")
    if "." not in name:
        name += mimetypes.guess_extension(content_type) or ""
    return name


class TwilioMediaFetcher:
    """Batch handler for ``omni.media.v1`` (its own consumer group)."""

    def __init__(
        self,
        accounts: AccountDirectory,
        store: AttachmentStore,
        bus: Bus,
        config: MediaFetchConfig,
    ) -> None:
        self._accounts = accounts
        self._store = store
        self._bus = bus
        self._config = config

    async def handle(self, records: Sequence[BusRecord]) -> None:
        for record in records:
            try:
                event = decode_event(record)
            except EventDecodeError as exc:  # no retry can decode it: dead-lettered at once
                await self._bus.publish(dead_letter_record(record, exc))
                DEAD_LETTERED_RECORDS.labels(topic=record.topic).inc()
                log.error("undecodable media request dead-lettered", error=str(exc))
                continue
            message = event.data
            if not isinstance(message, MessageReceived) or message.channel is not Channel.SMS:
                continue
            if not any(a.at_provider for a in message.attachments):
                continue
            with correlation_scope(event.correlationid):
                stored = await self.fetch(message)
                await self._bus.publish(
                    encode_event(
                        Event.of(stored, source=EVENT_SOURCE, subject=message.thread_key),
                        topic=Topic.INBOUND.value,
                        key=inbound_key(
                            message.workspace_id, message.channel, message.sender.address
                        ),
                    )
                )

    async def fetch(self, message: MessageReceived) -> MessageAttachmentsStored:
        """Every remote item of ``message`` stored, or listed as a failure with why."""
        attachments: list[AttachmentInfo] = []
        failures: list[MediaFetchFailure] = []
        client_auth = await self._credentials(message)
        async with httpx.AsyncClient(
            auth=client_auth[1] if client_auth else None,
            timeout=self._config.timeout_seconds,
            follow_redirects=True,  # to Twilio's CDN; httpx drops the credentials there
        ) as client:
            for attachment in message.attachments:
                if not attachment.at_provider:
                    attachments.append(attachment)
                    continue
                try:
                    if client_auth is None:
                        raise MediaRefusedError("no Twilio account with credentials")
                    if not is_account_media(attachment.storage_key, client_auth[0]):
                        raise MediaRefusedError("not a media URL of this Twilio account")
                    attachments.append(await self._store_one(client, message, attachment))
                except MediaRefusedError as exc:
                    log.warning(
                        "MMS media not fetched",
                        provider_message_id=message.provider_message_id,
                        reason=str(exc),
                    )
                    attachments.append(attachment)
                    failures.append(
                        MediaFetchFailure(url=attachment.storage_key, reason=str(exc)[:500])
                    )
        return MessageAttachmentsStored(
            workspace_id=message.workspace_id,
            channel=message.channel,
            provider_message_id=message.provider_message_id,
            attachments=tuple(attachments),
            failures=tuple(failures),
            stored_at=datetime.now(UTC),
        )

    async def _credentials(self, message: MessageReceived) -> tuple[str, tuple[str, str]] | None:
        if message.channel_account_id is None:
            return None
        account = await self._accounts.by_id(message.channel_account_id)
        if account is None or account.adapter != "twilio":
            return None
        try:
            sid, token = credentials(account)
        except ChannelRequestError:
            return None
        return media_prefix(self._config.api_base_url, sid), (sid, token)

    async def _store_one(
        self, client: httpx.AsyncClient, message: MessageReceived, attachment: AttachmentInfo
    ) -> AttachmentInfo:
        content, served_type = await self._download(client, attachment.storage_key)
        content_type = (served_type or attachment.content_type).split(";")[0].strip().lower()
        if not accepted_type(content_type):
            raise MediaRefusedError(f"content type {content_type or 'unknown'} is not kept")
        name = stored_name(attachment.filename, content_type)
        key = await self._store.put(message.workspace_id, name, content)
        return AttachmentInfo(
            filename=name[:255],
            content_type=content_type[:255],
            size=len(content),
            storage_key=key,
        )

    async def _download(self, client: httpx.AsyncClient, url: str) -> tuple[bytes, str | None]:
        policy = self._config.retry
        last_error = ""
        for attempt in range(1, policy.max_attempts + 1):
            try:
                async with client.stream("GET", url) as response:
                    if response.is_success:
                        return await self._body(response), response.headers.get("content-type")
                    if response.status_code not in RETRYABLE_STATUSES:
                        raise MediaRefusedError(f"Twilio answered {response.status_code}")
                    last_error = f"Twilio answered {response.status_code}"
            except httpx.TransportError as exc:
                last_error = f"network error: {type(exc).__name__}: {exc}"
            log.warning("Twilio media unavailable; retrying", attempt=attempt, error=last_error)
            if attempt < policy.max_attempts:
                await asyncio.sleep(backoff_delay(policy, attempt))
        raise MediaUnavailableError(
            f"Twilio media unavailable after {policy.max_attempts} attempts: {last_error}"[:500]
        )

    async def _body(self, response: httpx.Response) -> bytes:
        limit = self._config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise MediaRefusedError(f"larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise MediaRefusedError(f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
