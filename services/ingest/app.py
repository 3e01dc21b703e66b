"""ingest's HTTP and WebSocket surface (FastAPI), its SMTP listener and its dispatchers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.accounts import AccountDirectory
from services.ingest.adapters.channel_endpoints import router as channel_router
from services.ingest.adapters.email.mailgun import MailgunRoutesAdapter
from services.ingest.adapters.email.sendgrid import SendGridInboundParseAdapter
from services.ingest.adapters.email.smtp import SmtpEmailAdapter
from services.ingest.adapters.sms.twilio import TwilioConfig, TwilioSmsAdapter
from services.ingest.adapters.social.endpoints import router as meta_router
from services.ingest.adapters.social.meta import MetaAdapter, MetaConfig
from services.ingest.adapters.webchat import WebChatAdapter, WebChatConfig
from services.ingest.adapters.webchat_endpoints import router as webchat_router
from services.ingest.consent import ConsentDirectory
from services.ingest.deps import IngestState
from services.ingest.dispatcher import OutboundDispatcher
from services.ingest.front import IngestApi
from services.ingest.media import MediaFetchConfig, TwilioMediaFetcher
from services.ingest.replay import ReplayGuard
from services.ingest.send_ledger import SendLedger
from services.ingest.smtp import SmtpListener
from services.ingest.webchat_hub import WebChatHub
from services.ingest.webchat_origins import WebChatOrigins
from services.ingest.webhooks import WebhookFanOut, WebhookSender
from services.ingest.widget.endpoints import install_widget
from shared.bus.consumer import ConsumerLoop
from shared.bus.port import Bus
from shared.channels.attachments import DirectoryAttachmentStore
from shared.channels.email.outbound import SmtpRelay
from shared.channels.protocol import ChannelLimits, ChannelRuntime
from shared.channels.registry import AdapterFactory, ChannelRegistry
from shared.channels.sending import RetryPolicy
from shared.correlation import CorrelationMiddleware
from shared.db.session import Database
from shared.events import Channel, Topic
from shared.http import BodySizeLimitMiddleware, StorableTextMiddleware, add_health_routes
from shared.outbox import settle_published_marks
from shared.problems import install_problem_handlers
from shared.rate_limit import TokenBuckets
from shared.runtime import start_bus
from shared.settings import Environment, Settings

log = structlog.get_logger(__name__)

# Also registered as entry points (pyproject.toml); listed here for a stale install.
BUILTIN_ADAPTERS: dict[str, AdapterFactory] = {
    "webchat": WebChatAdapter,
    "email": SmtpEmailAdapter,
    "sendgrid": SendGridInboundParseAdapter,
    "mailgun": MailgunRoutesAdapter,
    "twilio": TwilioSmsAdapter,
    "meta": MetaAdapter,
}
WEBHOOK_PREFIX = "/v1/channels/"
# The webhook fan-out reads every event (a subscriptions query per batch) but serves no
# one who waits on it within a blink: its fetches gather for up to this long, so it
# handles a few larger batches a second instead of one per event. (The media fetcher
# does not: its gathered batches of inbound records, decoded in one go, held up the
# webhooks ingest answers meanwhile: B1's p99 at half of max went from 17-26 to 40-229 ms.)
BACKGROUND_GATHER_MS = 100


class RequestBodyLimit:
    """The JSON API's body limit everywhere but provider webhooks, which read their
    (larger) bodies themselves so a refusal is answered in the provider's terms."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt_prefixes: Sequence[str]) -> None:
        self._app = app
        self._limited = BodySizeLimitMiddleware(app, max_bytes=max_bytes)
        self._exempt = tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self._exempt):
            await self._app(scope, receive, send)
            return
        await self._limited(scope, receive, send)


class StorableTextOutsideWebhooks:
    """Text that cannot be stored (NUL, lone surrogates, not UTF-8) is refused with 422 on
    the widget's JSON API; provider webhooks are answered in the provider's terms."""

    def __init__(self, app: ASGIApp, *, exempt_prefixes: Sequence[str]) -> None:
        self._app = app
        self._checked = StorableTextMiddleware(app)
        self._exempt = tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self._exempt):
            await self._app(scope, receive, send)
            return
        await self._checked(scope, receive, send)


def channel_limits(settings: Settings) -> ChannelLimits:
    return ChannelLimits(
        max_message_bytes=settings.email_max_message_bytes,
        max_attachments=settings.email_max_attachments,
        max_text_chars=settings.email_max_text_chars,
        signature_max_age_seconds=settings.webhook_signature_max_age_seconds,
    )


def smtp_relay(settings: Settings) -> SmtpRelay:
    password = settings.smtp_relay_password
    return SmtpRelay(
        host=settings.smtp_relay_host,
        port=settings.smtp_relay_port,
        username=settings.smtp_relay_username,
        password=password.get_secret_value() if password is not None else None,
        start_tls=settings.smtp_relay_starttls,
        use_tls=settings.smtp_relay_tls,
    )


def channel_runtime(settings: Settings, hub: WebChatHub) -> ChannelRuntime:
    return ChannelRuntime(
        limits=channel_limits(settings),
        services={
            WebChatHub: hub,
            WebChatConfig: WebChatConfig(
                session_secret=settings.chat_session_secret.get_secret_value(),
                max_message_chars=settings.max_message_chars,
            ),
            SmtpRelay: smtp_relay(settings),
            TwilioConfig: TwilioConfig(
                api_base_url=settings.twilio_api_base_url,
                public_base_url=settings.public_base_url,
                max_attempts=settings.sms_send_max_attempts,
                backoff_seconds=settings.sms_retry_backoff_seconds,
            ),
            MetaConfig: MetaConfig(
                graph_base_url=settings.meta_graph_base_url,
                api_version=settings.meta_graph_api_version,
                max_attempts=settings.meta_send_max_attempts,
                backoff_seconds=settings.meta_retry_backoff_seconds,
            ),
        },
    )


def create_app(
    settings: Settings, *, bus: Bus | None = None, database: Database | None = None
) -> FastAPI:
    """The ingest app. Injected ``bus``/``database`` are owned by the caller (dev mode)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_bus = bus is None
        own_db = database is None
        active_bus = bus if bus is not None else await start_bus(settings, client_suffix="ingest")
        active_db = database if database is not None else Database(settings.database_url)
        hub = WebChatHub()
        registry = ChannelRegistry.discover(
            channel_runtime(settings, hub),
            builtins=BUILTIN_ADAPTERS,
            options=settings.channel_options,
        )
        limits = channel_limits(settings)
        ingest = IngestState(
            settings=settings,
            bus=active_bus,
            database=active_db,
            webchat=hub,
            registry=registry,
            accounts=AccountDirectory(
                active_db, ttl_seconds=settings.channel_account_cache_seconds
            ),
            attachments=DirectoryAttachmentStore(settings.attachment_store_dir),
            replay_guard=ReplayGuard(
                active_db,
                retention=timedelta(seconds=2 * settings.webhook_signature_max_age_seconds),
            ),
            limits=limits,
            webchat_origins=WebChatOrigins(
                active_db,
                any_when_unlisted=settings.effective_webchat_any_origin_when_unlisted,
                ttl_seconds=settings.webchat_settings_cache_seconds,
            ),
            webchat_buckets=TokenBuckets(per_minute=settings.effective_webchat_messages_per_minute),
        )
        app.state.ingest = ingest
        webchat_dispatcher = ConsumerLoop(
            name="ingest-outbound-dispatcher",
            source=active_bus.consumer([Topic.OUTBOUND.value], group_id=None, from_latest=True),
            handler=OutboundDispatcher(
                registry, ingest.accounts, ingest.attachments, limits, channels={Channel.WEBCHAT}
            ).handle,
            bus=active_bus,
        )
        provider_dispatcher = ConsumerLoop(
            name="ingest-outbound-providers",
            source=active_bus.consumer(
                [Topic.OUTBOUND.value], group_id=settings.outbound_consumer_group
            ),
            handler=OutboundDispatcher(
                registry,
                ingest.accounts,
                ingest.attachments,
                limits,
                channels=set(Channel) - {Channel.WEBCHAT},
                bus=active_bus,
                consent=ConsentDirectory(active_db).refusal,
                ledger=SendLedger(
                    active_db, retention=timedelta(seconds=settings.send_ledger_retention_seconds)
                ),
            ).handle,
            bus=active_bus,
            max_attempts=settings.consumer_max_attempts,
        )
        media_fetcher = ConsumerLoop(
            name="ingest-media-fetcher",
            source=active_bus.consumer([Topic.MEDIA.value], group_id=settings.media_consumer_group),
            handler=TwilioMediaFetcher(
                ingest.accounts,
                ingest.attachments,
                active_bus,
                MediaFetchConfig(
                    api_base_url=settings.twilio_api_base_url,
                    max_bytes=settings.sms_media_max_bytes,
                    retry=RetryPolicy(
                        max_attempts=settings.sms_send_max_attempts,
                        backoff_seconds=settings.sms_retry_backoff_seconds,
                    ),
                ),
            ).handle,
            bus=active_bus,
            max_attempts=settings.consumer_max_attempts,
        )
        webhook_fan_out = ConsumerLoop(
            name="ingest-webhooks",
            source=active_bus.consumer(
                [Topic.EVENTS.value],
                group_id=settings.webhook_consumer_group,
                from_latest=settings.webhook_group_start == "latest",
                gather_ms=BACKGROUND_GATHER_MS,
            ),
            handler=WebhookFanOut(active_db, max_attempts=settings.webhook_max_attempts).handle,
            bus=active_bus,
            max_attempts=settings.consumer_max_attempts,
        )
        dispatchers = [webchat_dispatcher, provider_dispatcher, media_fetcher, webhook_fan_out]
        for dispatcher in dispatchers:
            await dispatcher.start()
        tasks = [asyncio.create_task(d.run()) for d in dispatchers]
        webhook_sender = WebhookSender(active_db, settings)
        tasks.append(asyncio.create_task(webhook_sender.run()))
        smtp = await _start_smtp(ingest)
        app.state.smtp = smtp
        try:
            yield
        finally:
            app.state.shutting_down = True
            if smtp is not None:
                await smtp.stop()
            for dispatcher in dispatchers:
                dispatcher.request_stop()
            webhook_sender.request_stop()
            await hub.close_all()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
            if own_bus:
                await active_bus.stop()
            await settle_published_marks(active_db.sessions)  # before the pool closes
            if own_db:
                await active_db.dispose()

    app = IngestApi(
        title="omniroute ingest",
        version="1.0.0",
        description="Channel webhooks, the SMTP listener and the web-chat widget protocol.",
        lifespan=lifespan,
    )
    app.state.service_name = "ingest"
    # Inside the body limit: a huge body is refused before anything reads it whole.
    app.add_middleware(StorableTextOutsideWebhooks, exempt_prefixes=[WEBHOOK_PREFIX])
    app.add_middleware(
        RequestBodyLimit,
        max_bytes=settings.max_request_bytes,
        exempt_prefixes=[WEBHOOK_PREFIX],
    )
    app.add_middleware(CorrelationMiddleware)
    install_problem_handlers(app)
    app.serve_chat_messages_with(max_bytes=settings.max_request_bytes)

    async def bus_ready() -> bool:
        return await ingest_state_of(app).bus.healthy()

    async def db_ready() -> bool:
        return await ingest_state_of(app).database.healthy()

    add_health_routes(app, {"bus": bus_ready, "database": db_ready})
    app.include_router(webchat_router)
    app.include_router(meta_router)
    app.include_router(channel_router)
    install_widget(app)
    return app


async def _start_smtp(ingest: IngestState) -> SmtpListener | None:
    settings = ingest.settings
    port = settings.effective_smtp_listen_port
    if port == 0:
        return None
    listener = SmtpListener(ingest, host=settings.smtp_listen_host, port=port)
    try:
        await listener.start()
    except OSError as exc:
        if settings.environment is not Environment.DEV:
            raise
        # Dev mode's default port may be taken (another `make run`): chat still works.
        log.warning("SMTP listener not started", port=port, error=str(exc))
        return None
    return listener


def ingest_state_of(app: FastAPI) -> IngestState:
    state: IngestState = app.state.ingest
    return state
