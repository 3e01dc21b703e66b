"""agent_api: the REST + WebSocket app (FastAPI)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from services.agent_api.agents.admin_endpoints import router as agent_admin_router
from services.agent_api.agents.endpoints import router as agents_router
from services.agent_api.analytics.endpoints import router as analytics_router
from services.agent_api.api_keys.endpoints import router as api_keys_router
from services.agent_api.canned.endpoints import router as canned_router
from services.agent_api.channel_accounts.endpoints import router as channel_accounts_router
from services.agent_api.console.endpoints import install_console
from services.agent_api.contacts.endpoints import router as contacts_router
from services.agent_api.conversations.endpoints import router as conversations_router
from services.agent_api.csat.endpoints import router as csat_router
from services.agent_api.csat.endpoints import surveys as surveys_router
from services.agent_api.deps import AgentApiState
from services.agent_api.idempotency import REPLAYED_HEADER, IdempotencyMiddleware
from services.agent_api.notices.endpoints import router as notices_router
from services.agent_api.queues.endpoints import router as queues_router
from services.agent_api.rate_limit import RateLimitMiddleware
from services.agent_api.realtime.endpoints import AGENT_SOCKET_PATH, agent_socket
from services.agent_api.realtime.hub import PULL_BATCH, AgentHub
from services.agent_api.routing.endpoints import router as routing_router
from services.agent_api.supervisor.endpoints import router as supervisor_router
from services.agent_api.teams.endpoints import router as teams_router
from services.agent_api.webchat.endpoints import router as webchat_settings_router
from services.agent_api.webhooks.endpoints import router as webhooks_router
from shared.bus.consumer import ConsumerLoop
from shared.bus.port import Bus
from shared.correlation import CorrelationMiddleware, correlation_scope, incoming_correlation_id
from shared.db.session import Database
from shared.events import Topic
from shared.http import BodySizeLimitMiddleware, StorableTextMiddleware, add_health_routes
from shared.metrics import BUS_REACHABLE
from shared.outbox import OutboxSweeper, settle_published_marks
from shared.problems import PROBLEM_RESPONSES, install_problem_handlers
from shared.runtime import start_bus
from shared.settings import Settings

log = structlog.get_logger(__name__)

BUS_CHECK_SECONDS = 5.0


class AgentApi(FastAPI):
    """FastAPI, except that agent WebSockets (``/v1/ws``) are served ahead of the
    middleware stack and the router.

    An ASGI call lasts as long as its WebSocket, and every layer it passes through stays
    alive with it: coroutine frames, closures, request-scoped exit stacks, dependency
    results. Through the HTTP-only middleware and FastAPI's routing and dependency
    machinery that was about 17 KiB per socket, for nothing a socket uses after its
    handshake; a replica holds thousands (benchmark B5). The one thing the stack gives a
    socket, its correlation id on log lines, is bound here.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == AGENT_SOCKET_PATH:
            scope["app"] = self
            with correlation_scope(incoming_correlation_id(scope)):
                await agent_socket(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, *, bus: Bus | None = None, database: Database | None = None
) -> FastAPI:
    """The agent API. Injected ``bus``/``database`` are owned by the caller (dev mode)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active_bus = (
            bus if bus is not None else await start_bus(settings, client_suffix="agent-api")
        )
        active_db = database if database is not None else Database(settings.database_url)
        # A pull's frames for one socket take at most half of its send queue.
        hub = AgentHub(active_db, pull_batch=min(PULL_BATCH, settings.ws_send_queue_size // 2))
        app.state.agent_api = AgentApiState(settings, active_bus, active_db, hub)
        pushes = ConsumerLoop(
            name="agent-api-events",
            source=active_bus.consumer([Topic.EVENTS.value], group_id=None, from_latest=True),
            handler=hub.handle,
            bus=active_bus,
        )
        sweeper = OutboxSweeper(
            active_db.sessions,
            active_bus,
            interval_seconds=settings.outbox_sweep_interval_seconds,
            min_age_seconds=settings.outbox_sweep_min_age_seconds,
        )
        await pushes.start()
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(pushes.run()),
            asyncio.create_task(_every(settings.ws_heartbeat_seconds, stopping, hub.heartbeat)),
            asyncio.create_task(_every(settings.ws_pull_interval_seconds, stopping, hub.pull_all)),
            asyncio.create_task(_report_bus_reachable(active_bus, stopping)),
        ]
        if bus is None:  # in dev mode the router's sweeper already covers the shared outbox
            tasks.append(asyncio.create_task(sweeper.run()))
        try:
            yield
        finally:
            app.state.shutting_down = True
            stopping.set()
            pushes.request_stop()
            sweeper.request_stop()
            await hub.close_all()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
            if bus is None:
                await active_bus.stop()
            await settle_published_marks(active_db.sessions)  # before the pool closes
            if database is None:
                await active_db.dispose()

    app = AgentApi(
        title="omniroute agent API",
        version="1.0.0",
        description=(
            "REST and WebSocket API for agent desks, supervisor walls and integrations. "
            "Errors are RFC 9457 `application/problem+json`."
        ),
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
    )
    app.state.service_name = "agent_api"
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(StorableTextMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_minute)
    app.add_middleware(CorrelationMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_allow_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "X-API-Key",
            "X-Correlation-ID",
        ],
        expose_headers=["X-Correlation-ID", REPLAYED_HEADER, "Retry-After"],
    )
    install_problem_handlers(app)

    async def db_ready() -> bool:
        state: AgentApiState = app.state.agent_api
        return await state.database.healthy()

    # Ready means "can serve agents": the database only. Every change is committed with
    # its outbox rows (the sweeper publishes them once Kafka is back) and the push hub
    # re-reads the stream from the database, so a Kafka outage must not take every
    # replica out of the Service. Kafka's state is the omni_bus_reachable gauge.
    add_health_routes(app, {"database": db_ready})
    app.include_router(agents_router)
    app.include_router(conversations_router)
    app.include_router(routing_router)
    for extra in (agent_admin_router, teams_router, api_keys_router, contacts_router):
        app.include_router(extra)
    for extra in (queues_router, canned_router):
        app.include_router(extra)
    app.include_router(webhooks_router)
    app.include_router(channel_accounts_router)
    app.include_router(notices_router)
    app.include_router(analytics_router)
    app.include_router(csat_router)
    app.include_router(surveys_router)
    app.include_router(supervisor_router)
    app.include_router(webchat_settings_router)
    install_console(app)
    return app


async def _report_bus_reachable(bus: Bus, stopping: asyncio.Event) -> None:
    """Check the bus now and every ``BUS_CHECK_SECONDS`` into ``omni_bus_reachable``."""
    gauge = BUS_REACHABLE.labels(service="agent_api")
    while not stopping.is_set():
        try:
            reachable = await bus.healthy()
        except Exception:  # a check that fails says "unreachable", it never ends the loop
            reachable = False
        gauge.set(1 if reachable else 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=BUS_CHECK_SECONDS)


async def _every(
    seconds: float, stopping: asyncio.Event, action: Callable[[], Awaitable[None] | None]
) -> None:
    """Run ``action`` every ``seconds`` until ``stopping`` is set; errors are logged."""
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), timeout=seconds)
        except TimeoutError:
            try:
                outcome = action()
                if outcome is not None:
                    await outcome
            except Exception as exc:  # a DB hiccup must not end the loop
                log.warning(
                    "periodic task failed", task=getattr(action, "__name__", "?"), error=str(exc)
                )
