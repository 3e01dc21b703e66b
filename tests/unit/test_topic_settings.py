"""Settings for the topics omniroute creates, and their way into the Kafka bus."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from shared import runtime
from shared.bus.kafka import KafkaBus
from shared.settings import Settings


def test_replication_factor_defaults_to_one_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().topic_replication_factor == 1

    monkeypatch.setenv("OMNI_TOPIC_REPLICATION_FACTOR", "3")

    assert Settings().topic_replication_factor == 3


def test_replication_factor_below_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="topic_replication_factor"):
        Settings(topic_replication_factor=0)


async def test_the_services_bus_creates_topics_with_the_configured_replication_factor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``start_bus`` (every service's bus) hands the setting to the Kafka bus; what the
    bus does with it on a real broker is tested in tests/integration/test_kafka_bus.py."""
    built: list[KafkaBus] = []

    class UnconnectedKafkaBus(KafkaBus):
        """The real bus, built by ``start_bus``; only its two broker calls are skipped."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            built.append(self)

        async def ensure_topics(self, names: Sequence[str]) -> None:
            pass

        async def start(self) -> None:
            pass

    monkeypatch.setattr(runtime, "KafkaBus", UnconnectedKafkaBus)
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1", topic_partitions=4, topic_replication_factor=3
    )

    await runtime.start_bus(settings, client_suffix="test")

    [bus] = built
    assert (bus.partitions, bus.replication_factor) == (4, 3)
