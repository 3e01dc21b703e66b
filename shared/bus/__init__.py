"""The message bus port and its two implementations (Apache Kafka and in-process)."""

from shared.bus.port import (
    Bus,
    BusRecord,
    ConsumerSource,
    OutgoingRecord,
)

__all__ = ["Bus", "BusRecord", "ConsumerSource", "OutgoingRecord"]
