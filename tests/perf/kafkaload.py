"""Kafka pieces of the bench, each run as its own process (``python -m tests.perf.kafkaload``).

- ``inbound``: produce ``count`` normalized web-chat messages (``MessageReceived``) on
  seeded conversations to ``omni.inbound.v1``, as ingest would, as fast as the producer
  goes (B2, B3, B6 load).
- ``raw``: the B4 baseline: an open-loop producer (same schedule and value sizes as the
  webhooks) and a consumer in another process; latency from the scheduled send time to
  the consumer's receipt, on the same broker with plain aiokafka (acks=all).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.events import (
    Channel,
    Event,
    MessageReceived,
    Sender,
    Topic,
    encode_event,
    inbound_key,
)
from tests.perf.common import latency_summary
from tests.perf.payloads import text_of
from tests.perf.seed import session_id


def inbound_records(
    spec: dict[str, Any],
) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    workspace_id = uuid.UUID(spec["workspace_id"])
    rng = random.Random(int(spec.get("seed", 3)))  # noqa: S311 - reproducible load, not secrets
    conversations = int(spec["conversations"])
    first = int(spec.get("first", 0))
    new_threads = bool(spec.get("new_threads", False))
    out = []
    for index in range(int(spec["count"])):
        if new_threads:
            session = f"wcs_new{uuid.uuid4().hex}"
        else:
            session = session_id(first + rng.randrange(conversations))
        payload = MessageReceived(
            workspace_id=workspace_id,
            channel=Channel.WEBCHAT,
            provider_message_id=f"{session}:{uuid.uuid4().hex}",
            thread_key=session,
            sender=Sender(address=session, display_name="Customer"),
            text=text_of(rng.randint(200, 1000), rng, prefix=f"bench#{index}#"),
            received_at=datetime.now(UTC),
        )
        record = encode_event(
            Event.of(payload, source="omniroute/ingest"),
            topic=Topic.INBOUND.value,
            key=inbound_key(workspace_id, Channel.WEBCHAT, session),
        )
        out.append((record.topic, record.key or b"", record.value, list(record.headers)))
    return out


async def produce_inbound(spec: dict[str, Any]) -> dict[str, Any]:
    records = inbound_records(spec)
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"], acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        started = time.time()
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        await asyncio.gather(*futures)
        acked = time.time()
    finally:
        await producer.stop()
    return {"count": len(records), "started_wall": started, "acked_wall": acked}


async def raw_consumer(spec: dict[str, Any]) -> None:
    """Consume ``expected`` bench records from the end of ``topic``; arrival wall times."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"],
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(spec["topic"], p) for p in range(int(spec["partitions"]))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        print(json.dumps({"ready": len(partitions)}), flush=True)  # noqa: T201 - protocol line
        expected = int(spec["expected"])
        arrival: dict[str, float] = {}
        deadline = time.monotonic() + float(spec.get("timeout_seconds", 120))
        while len(arrival) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    value: bytes = record.value
                    if value.startswith(b"bench#"):
                        arrival.setdefault(value[6 : value.index(b"#", 6)].decode(), now)
    finally:
        await consumer.stop()
    print(json.dumps({"arrival": arrival}), flush=True)  # noqa: T201 - the result


async def raw_producer(spec: dict[str, Any]) -> dict[str, Any]:
    """Open loop: record *i* sent at ``start + i / rate``; returns the schedule's start."""
    rng = random.Random(11)  # noqa: S311 - reproducible load, not secrets
    values = [
        f"bench#{index}#".encode() + text_of(rng.randint(500, 1500), rng).encode()
        for index in range(int(spec["count"]))
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"], acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    rate = float(spec["rate"])
    pending: list[asyncio.Future[Any]] = []
    try:
        start = loop.time() + 0.2
        start_wall = time.time() + 0.2
        for index, value in enumerate(values):
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(
                await producer.send(spec["topic"], value=value, key=str(index % 97).encode())
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"start_wall": start_wall, "rate": rate, "sent": len(values)}


def latencies_from(arrival: dict[str, float], start_wall: float, rate: float) -> list[float]:
    return [(t - (start_wall + int(i) / rate)) * 1000 for i, t in arrival.items()]


async def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    role = spec["role"]
    if role == "inbound":
        print(json.dumps(await produce_inbound(spec)), flush=True)  # noqa: T201 - the result
    elif role == "raw-consumer":
        await raw_consumer(spec)
    else:
        print(json.dumps(await raw_producer(spec)), flush=True)  # noqa: T201 - the result


__all__ = ["latencies_from", "latency_summary"]

if __name__ == "__main__":
    uvloop.run(main())
