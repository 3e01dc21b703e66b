"""A Kafka broker that can be made unreachable for one test, without touching the
shared broker: a TCP relay in front of it.

A Kafka client dials the bootstrap address once, then the addresses the broker
advertises in its metadata. The relay rewrites those (Metadata responses) to its own
address, so every connection of the client passes through it; ``cut()`` closes the
relay's port and every connection through it, as a broker outage looks to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

from aiokafka.protocol import metadata

from tests.conftest import free_port

METADATA_API_KEY = 3


class KafkaRelay:
    def __init__(self, broker: str) -> None:
        host, _, port = broker.rpartition(":")
        self._broker = (host, int(port))
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Close the port and every connection through it."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.close()
        self._connections.clear()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        broker_in, broker_out = await asyncio.open_connection(*self._broker)
        self._connections |= {client_out, broker_out}
        requests: dict[int, tuple[int, int]] = {}  # correlation id -> api key, version

        async def to_broker() -> None:
            while frame := await _read_frame(client_in):
                api_key, version, correlation_id = struct.unpack(">hhi", frame[:8])
                requests[correlation_id] = (api_key, version)
                broker_out.write(struct.pack(">i", len(frame)) + frame)

        async def to_client() -> None:
            while frame := await _read_frame(broker_in):
                (correlation_id,) = struct.unpack(">i", frame[:4])
                api_key, version = requests.pop(correlation_id, (-1, -1))
                if api_key == METADATA_API_KEY:
                    frame = frame[:4] + self._advertise_self(frame[4:], version)
                client_out.write(struct.pack(">i", len(frame)) + frame)

        try:
            await asyncio.gather(to_broker(), to_client())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_out, broker_out):
                self._connections.discard(writer)
                writer.close()

    def _advertise_self(self, body: bytes, version: int) -> bytes:
        response_type = getattr(metadata, f"MetadataResponse_v{version}")
        response = response_type.decode(body)
        response.brokers = [
            (node_id, "127.0.0.1", self.port, *rest)
            for node_id, _host, _port, *rest in response.brokers
        ]
        encoded: bytes = response.encode()
        return encoded


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    try:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


@contextlib.asynccontextmanager
async def kafka_relay(broker: str) -> AsyncIterator[KafkaRelay]:
    relay = KafkaRelay(broker)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.cut()
