"""Wiring of real or in-process parts from settings (the services' shared composition)."""

from __future__ import annotations

from shared.bus.kafka import KafkaBus
from shared.bus.memory import MemoryBus
from shared.bus.port import Bus
from shared.events import ALL_TOPICS
from shared.settings import Settings


async def start_bus(settings: Settings, *, client_suffix: str) -> Bus:
    """Kafka when OMNI_KAFKA_BOOTSTRAP_SERVERS is set, else the in-process bus."""
    bus: Bus
    if settings.kafka_bootstrap_servers:
        bus = KafkaBus(
            settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-{client_suffix}",
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
        )
        await bus.ensure_topics(ALL_TOPICS)
    else:
        bus = MemoryBus(partitions=settings.topic_partitions)
    await bus.start()
    return bus
