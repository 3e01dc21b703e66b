"""The router process: the inbound consumer, the outbox sweeper, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI

from services.router.delivery import delivery_consumer
from services.router.maintenance import RoutingMaintenance
from services.router.worker import inbound_consumer
from shared.bus.port import Bus
from shared.db.session import Database
from shared.http import add_health_routes
from shared.outbox import OutboxSweeper, settle_published_marks
from shared.problems import install_problem_handlers
from shared.routing.engine import PolicyCache
from shared.runtime import start_bus
from shared.settings import Settings


def create_app(
    settings: Settings, *, bus: Bus | None = None, database: Database | None = None
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active_bus = bus if bus is not None else await start_bus(settings, client_suffix="router")
        active_db = database if database is not None else Database(settings.database_url)
        app.state.bus = active_bus
        app.state.database = active_db
        policies = PolicyCache(ttl_seconds=settings.policy_cache_seconds)
        consumer = inbound_consumer(
            active_db,
            active_bus,
            policies=policies,
            group_id=settings.router_group_id,
            from_latest=settings.router_group_start == "latest",
            max_attempts=settings.consumer_max_attempts,
        )
        delivery = delivery_consumer(
            active_db,
            active_bus,
            group_id=f"{settings.router_group_id}-delivery",
            from_latest=settings.router_group_start == "latest",
            max_attempts=settings.consumer_max_attempts,
        )
        maintenance = RoutingMaintenance(
            active_db,
            active_bus,
            policies,
            interval_seconds=settings.routing_tick_seconds,
            receipt_retention=timedelta(seconds=settings.pending_receipt_retention_seconds),
        )
        sweeper = OutboxSweeper(
            active_db.sessions,
            active_bus,
            interval_seconds=settings.outbox_sweep_interval_seconds,
            min_age_seconds=settings.outbox_sweep_min_age_seconds,
        )
        tasks = [
            asyncio.create_task(consumer.run()),
            asyncio.create_task(delivery.run()),
            asyncio.create_task(sweeper.run()),
            asyncio.create_task(maintenance.run()),
        ]
        try:
            yield
        finally:
            app.state.shutting_down = True
            consumer.request_stop()
            delivery.request_stop()
            sweeper.request_stop()
            maintenance.request_stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
            if bus is None:
                await active_bus.stop()
            await settle_published_marks(active_db.sessions)  # before the pool closes
            if database is None:
                await active_db.dispose()

    # Only probes and metrics: no API to document.
    app = FastAPI(
        title="omniroute router",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service_name = "router"
    install_problem_handlers(app)

    async def bus_ready() -> bool:
        ready: bool = await app.state.bus.healthy()
        return ready

    async def db_ready() -> bool:
        ready: bool = await app.state.database.healthy()
        return ready

    add_health_routes(app, {"bus": bus_ready, "database": db_ready})
    return app
