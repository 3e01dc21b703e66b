"""Prometheus metrics shared by the services, and the ``/metrics`` exposition."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

INBOUND_MESSAGES = Counter(
    "omni_inbound_messages_total", "Inbound messages acknowledged by the broker", ["channel"]
)
REJECTED_REQUESTS = Counter(
    "omni_rejected_requests_total", "Requests refused with a 4xx", ["service", "status"]
)
EVENTS_PUBLISHED = Counter("omni_events_published_total", "Events published", ["topic"])
ASSIGNED_PARTITIONS = Gauge(
    "omni_consumer_assigned_partitions", "Partitions assigned to this consumer", ["group"]
)
CONSUMED_RECORDS = Counter("omni_consumed_records_total", "Records processed", ["consumer"])
DEAD_LETTERED_RECORDS = Counter(
    "omni_dead_lettered_records_total", "Records sent to a dead-letter topic", ["topic"]
)
ROUTING_DECISIONS = Counter(
    "omni_routing_decisions_total", "Routing outcomes for new conversations", ["outcome"]
)
SLA_BREACHES = Counter(
    "omni_sla_breaches_total", "First-response SLA breaches", ["tier", "channel"]
)
ROUTING_LATENCY = Histogram(
    "omni_routing_batch_seconds",
    "Time to thread, store and route one batch of inbound records",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
END_TO_END_LATENCY = Histogram(
    "omni_end_to_end_seconds",
    "From the customer's message accepted by ingest to its push to the agent's WebSocket",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
ROUTING_MAINTENANCE_FAILURES = Counter(
    "omni_routing_maintenance_failures_total",
    "Router maintenance work that failed and was left for later while the rest went on: "
    "a timer (put back with a delay), one workspace's queue drain, the queue gauges, "
    "receipt settling; tick: the whole tick, for database or broker trouble",
    ["work"],
)
QUEUE_DEPTH = Gauge("omni_queue_depth", "Conversations waiting for an agent", ["tier"])
QUEUE_OLDEST_WAIT = Gauge(
    "omni_queue_oldest_wait_seconds", "Age of the oldest waiting conversation", ["tier"]
)
CONSUMER_LAG = Gauge(
    "omni_consumer_lag_records",
    "Records not yet consumed on assigned partitions",
    ["group", "topic"],
)
OUTBOUND_FAILURES = Counter(
    "omni_outbound_failures_total", "Replies that could not be delivered", ["channel", "provider"]
)
WEBSOCKET_CONNECTIONS = Gauge(
    "omni_websocket_connections", "Open WebSocket connections", ["service"]
)
WEBSOCKET_SLOW_CLIENTS_DROPPED = Counter(
    "omni_websocket_slow_clients_dropped_total", "WebSockets closed for not reading", ["service"]
)
OUTBOX_UNPUBLISHED_SWEPT = Counter(
    "omni_outbox_swept_total", "Outbox rows published by the sweeper (left by a crash)"
)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


WEBHOOK_DELIVERIES_CREATED = Counter(
    "omni_webhook_deliveries_created_total",
    "Webhook deliveries created (one per matching subscription and event)",
    ["event_type"],
)
WEBHOOK_ATTEMPTS = Counter(
    "omni_webhook_attempts_total",
    "Webhook delivery attempts by what followed: delivered, retry or failed (gave up)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "omni_webhook_attempt_seconds",
    "Duration of one webhook HTTP attempt",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

BUS_REACHABLE = Gauge(
    "omni_bus_reachable",
    "1 while the service reaches its bus (Kafka), checked every few seconds; "
    "agent_api stays ready without it",
    ["service"],
)
