"""Fixtures of the end-to-end tests: the services as real processes."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from shared.channels.contract import Recorder, smtp_stand_in
from tests.conftest import free_port
from tests.e2e.processes import ServiceProcess, running, wait_ready
from tests.meta_stand_in import MetaStandIn, meta_stand_in
from tests.twilio_stand_in import TwilioStandIn, twilio_stand_in

# A consumer group of its own per test run: routers of another run sharing the broker
# (and reading another database) never take this run's records.
ROUTER_GROUP = f"omni-router-test-{uuid.uuid4().hex[:8]}"

# Likewise for the group that sends email: another run's ingest never sends this run's.
OUTBOUND_GROUP = f"omni-ingest-outbound-test-{uuid.uuid4().hex[:8]}"

# And for the group that fetches MMS media.
MEDIA_GROUP = f"omni-ingest-media-test-{uuid.uuid4().hex[:8]}"
# And for the group that turns events into webhook deliveries (started at the end).
WEBHOOK_GROUP = f"omni-ingest-webhooks-test-{uuid.uuid4().hex[:8]}"
FAST_WEBHOOKS = {
    "OMNI_WEBHOOK_CONSUMER_GROUP": WEBHOOK_GROUP,
    "OMNI_WEBHOOK_GROUP_START": "latest",
    "OMNI_WEBHOOK_RETRY_BASE_SECONDS": "0.1",
    "OMNI_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
}

FAST_ROUTING = {
    "OMNI_ROUTING_TICK_SECONDS": "0.2",
    "OMNI_POLICY_CACHE_SECONDS": "0",
    "OMNI_ROUTER_GROUP_ID": ROUTER_GROUP,
    # The group is new and the broker may hold other runs' history: start at the end,
    # once the router holds its partitions (waited for below).
    "OMNI_ROUTER_GROUP_START": "latest",
}


def wait_until_router_reads(router: ServiceProcess, *, within_seconds: float = 60) -> None:
    """The router owns partitions of the test group with resolved positions."""
    pattern = re.compile(
        rf'omni_consumer_assigned_partitions\{{group="{ROUTER_GROUP}"\}} ([0-9.]+)'
    )
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        match = pattern.search(httpx.get(f"{router.base_url}/metrics", timeout=5).text)
        if match and float(match.group(1)) > 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"router never got partitions:\n{router.log_tail()}")


def wait_until_group_reads(
    service: ServiceProcess, group: str, *, within_seconds: float = 60
) -> None:
    """``service`` owns partitions of consumer ``group`` (e.g. ingest's webhook group)."""
    pattern = re.compile(rf'omni_consumer_assigned_partitions\{{group="{group}"\}} ([0-9.]+)')
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        match = pattern.search(httpx.get(f"{service.base_url}/metrics", timeout=5).text)
        if match and float(match.group(1)) > 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} never got partitions of {group}:\n{service.log_tail()}")


@dataclass(frozen=True)
class MailServers:
    """ingest's SMTP listener, and the stand-in SMTP relay replies are sent through."""

    listen_port: int
    relay_port: int
    relayed: Recorder


@pytest.fixture(scope="session")
def mail_servers() -> Iterator[MailServers]:
    with smtp_stand_in() as (recorder, relay_port):
        yield MailServers(listen_port=free_port(), relay_port=relay_port, relayed=recorder)


# ingest's public URL as Twilio calls it (behind a proxy): signatures are computed over
# it, and the status callbacks ingest asks Twilio for point at it.
PUBLIC_BASE_URL = "https://ingest.omniroute.test"


@pytest.fixture(scope="session")
def twilio() -> Iterator[TwilioStandIn]:
    """A stand-in of Twilio's Messages REST API that ingest sends SMS through."""
    with twilio_stand_in() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def meta() -> Iterator[MetaStandIn]:
    """A stand-in of Meta's Graph API (Messenger/Instagram Send API, WhatsApp Cloud API)."""
    with meta_stand_in() as stand_in:
        yield stand_in


@pytest.fixture(scope="package")
def stack(
    postgres_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    mail_servers: MailServers,
    twilio: TwilioStandIn,
    meta: MetaStandIn,
) -> Iterator[dict[str, ServiceProcess]]:
    """ingest, router and agent_api as processes on Kafka and PostgreSQL for the e2e
    tests; every test works in a workspace of its own. Package scope: the processes stop
    when the e2e tests end, so their timers and queue draining never touch the
    workspaces of tests that run later on the same database."""
    tmp_path = tmp_path_factory.mktemp("stack")
    ports = {"ingest": free_port(), "router": free_port(), "agent_api": free_port()}
    env = {
        "OMNI_ENVIRONMENT": "test",
        "OMNI_DATABASE_URL": postgres_url,
        "OMNI_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OMNI_INGEST_PORT": str(ports["ingest"]),
        "OMNI_ROUTER_PORT": str(ports["router"]),
        "OMNI_AGENT_API_PORT": str(ports["agent_api"]),
        "OMNI_SMTP_LISTEN_PORT": str(mail_servers.listen_port),
        "OMNI_SMTP_RELAY_HOST": "127.0.0.1",
        "OMNI_SMTP_RELAY_PORT": str(mail_servers.relay_port),
        "OMNI_SMTP_RELAY_STARTTLS": "false",
        "OMNI_OUTBOUND_CONSUMER_GROUP": OUTBOUND_GROUP,
        "OMNI_MEDIA_CONSUMER_GROUP": MEDIA_GROUP,
        "OMNI_ATTACHMENT_STORE_DIR": str(tmp_path / "attachments"),
        "OMNI_TWILIO_API_BASE_URL": twilio.base_url,
        "OMNI_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "OMNI_SMS_RETRY_BACKOFF_SECONDS": "0.1",
        "OMNI_META_GRAPH_BASE_URL": meta.base_url,
        "OMNI_META_RETRY_BACKOFF_SECONDS": "0.1",
        **FAST_ROUTING,
        **FAST_WEBHOOKS,
    }
    with contextlib.ExitStack() as stack:
        services = {
            name: stack.enter_context(
                running(f"services.{name}", env=env, port=port, log_dir=tmp_path)
            )
            for name, port in ports.items()
        }
        for service in services.values():
            wait_ready(service)
        wait_until_router_reads(services["router"])
        wait_until_group_reads(services["ingest"], WEBHOOK_GROUP)
        yield services
