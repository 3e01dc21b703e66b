"""ingest's HTTP and WebSocket surface (FastAPI)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.ingest.adapters.webchat_endpoints import router as webchat_router
from services.ingest.deps import IngestState
from services.ingest.dispatcher import OutboundDispatcher
from services.ingest.webchat_hub import WebChatHub
from shared.bus.consumer import ConsumerLoop
from shared.bus.port import Bus
from shared.correlation import CorrelationMiddleware
from shared.db.session import Database
from shared.events import Topic
from shared.http import BodySizeLimitMiddleware, add_health_routes
from shared.problems import install_problem_handlers
from shared.runtime import start_bus
from shared.settings import Settings


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
        app.state.ingest = IngestState(settings, active_bus, active_db, hub)
        dispatcher = ConsumerLoop(
            name="ingest-outbound-dispatcher",
            source=active_bus.consumer([Topic.OUTBOUND.value], group_id=None, from_latest=True),
            handler=OutboundDispatcher(hub).handle,
            bus=active_bus,
        )
        await dispatcher.start()
        dispatch_task = asyncio.create_task(dispatcher.run())
        try:
            yield
        finally:
            app.state.shutting_down = True
            dispatcher.request_stop()
            await hub.close_all()
            await asyncio.wait_for(dispatch_task, timeout=10)
            if own_bus:
                await active_bus.stop()
            if own_db:
                await active_db.dispose()

    app = FastAPI(
        title="omniroute ingest",
        version="1.0.0",
        description="Channel webhooks and the web-chat widget protocol.",
        lifespan=lifespan,
    )
    app.state.service_name = "ingest"
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(CorrelationMiddleware)
    install_problem_handlers(app)

    async def bus_ready() -> bool:
        return await ingest_state_of(app).bus.healthy()

    async def db_ready() -> bool:
        return await ingest_state_of(app).database.healthy()

    add_health_routes(app, {"bus": bus_ready, "database": db_ready})
    app.include_router(webchat_router)
    return app


def ingest_state_of(app: FastAPI) -> IngestState:
    state: IngestState = app.state.ingest
    return state
