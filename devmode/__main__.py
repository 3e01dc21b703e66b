"""``python -m devmode`` (``make run``): the whole system in one process.

In-process bus and a SQLite file by default; with OMNI_KAFKA_BOOTSTRAP_SERVERS and
OMNI_DATABASE_URL set, the same three services run on real Kafka and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn

from devmode.seed import (
    DEMO_AGENTS,
    DEMO_PASSWORD,
    DEMO_WORKSPACE_SLUG,
    enable_demo_surveys,
    seed_demo,
)
from services.agent_api.app import create_app as create_agent_api
from services.ingest.app import create_app as create_ingest
from services.router.app import create_app as create_router
from shared.db.migrate import upgrade
from shared.db.session import Database
from shared.logging import configure_logging
from shared.runtime import start_bus
from shared.settings import Settings, get_settings
from shared.websocket import WebSocketProtocol


def agent_api_url(settings: Settings) -> str:
    return f"http://{settings.agent_api_host}:{settings.agent_api_port}"


def dev_settings(settings: Settings) -> Settings:
    """Dev mode's settings: CSAT survey links point at the agent_api URL it prints,
    unless OMNI_AGENT_API_PUBLIC_URL names another."""
    if settings.agent_api_public_url:
        return settings
    return settings.model_copy(update={"agent_api_public_url": agent_api_url(settings)})


def walkthrough(settings: Settings) -> str:
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    api = agent_api_url(settings)
    ws_api = api.replace("http://", "ws://")
    agent = DEMO_AGENTS[0]
    bus = (
        f"Apache Kafka {settings.kafka_bootstrap_servers}"
        if settings.kafka_bootstrap_servers
        else "in-process"
    )
    ws_ingest = ingest.replace("http://", "ws://")
    login = (
        f'{{"workspace":"{DEMO_WORKSPACE_SLUG}","email":"{agent.email}",'
        f'"password":"{DEMO_PASSWORD}"}}'
    )
    smtp_port = settings.effective_smtp_listen_port
    embed = (
        f'<script src="{ingest}/widget.js" data-workspace="{DEMO_WORKSPACE_SLUG}" async></script>'
    )
    email_step = (
        f""" 4. Email: write to support@{DEMO_WORKSPACE_SLUG}.omniroute.dev (SMTP listener):
      .venv/bin/python -c "import smtplib; from email.message import EmailMessage as M; \\
        m = M(); m['From'] = 'lee@example.com'; \\
        m['To'] = 'support@{DEMO_WORKSPACE_SLUG}.omniroute.dev'; m['Subject'] = 'Broken zipper'; \\
        m.set_content('It broke after a week.'); \\
        smtplib.SMTP('127.0.0.1', {smtp_port}).send_message(m)"
    A new email conversation reaches Ada's socket.
"""
        if smtp_port
        else ""
    )
    return f"""
omniroute is running (single process: ingest, router, agent_api).
  console    {api}/console        (agents: sign in as {agent.email})
  wall       {api}/console/wall   (supervisors: sam@{DEMO_WORKSPACE_SLUG}.omniroute.dev)
  widget     {ingest}/widget/demo?workspace={DEMO_WORKSPACE_SLUG}
             embed: {embed}
  ingest     {ingest}/docs
  agent API  {api}/docs
  bus        {bus}
  database   {settings.database_url}

Try it from three more terminals in this folder (curl and jq; the WebSocket client
comes with the project: .venv/bin/python -m websockets URL, then type a frame).

 1. Agent: sign in, then open the live socket and authenticate with the first frame:
      TOKEN=$(curl -s {api}/v1/auth/token -H 'content-type: application/json' \\
        -d '{login}' | jq -r .access_token); echo "$TOKEN"
      .venv/bin/python -m websockets {ws_api}/v1/ws
      > {{"type":"auth","token":"<TOKEN>"}}

 2. Customer: open a chat session, listen on its socket, write:
      S=$(curl -s -X POST {ingest}/v1/webchat/{DEMO_WORKSPACE_SLUG}/sessions \\
        -H 'content-type: application/json' -d '{{"display_name":"Grace"}}')
      SID=$(echo "$S" | jq -r .session_id); CT=$(echo "$S" | jq -r .session_token); echo "$CT"
      .venv/bin/python -m websockets {ws_ingest}/v1/webchat/sessions/$SID/ws   (another terminal)
      > {{"type":"auth","token":"<CT>"}}
      curl -s {ingest}/v1/webchat/sessions/$SID/messages -H "authorization: Bearer $CT" \\
        -H 'content-type: application/json' -d '{{"text":"Hi, my order is late"}}'
    The agent socket shows conversation.assigned and message.created.

 3. Agent replies; the customer socket receives it:
      CID=$(curl -s {api}/v1/conversations -H "authorization: Bearer $TOKEN" | jq -r '.items[0].id')
      curl -s {api}/v1/conversations/$CID/replies -H "authorization: Bearer $TOKEN" \\
        -H 'content-type: application/json' -d '{{"text":"Sorry! It ships today."}}'

{email_step}
 5. Resolve the chat; the customer gets a CSAT survey (reply 1-5, or the link to
    {settings.agent_api_public_url or api}/v1/surveys/…); scores show on the wall:
      curl -s -X POST {api}/v1/conversations/$CID/resolve -H "authorization: Bearer $TOKEN" \\
        -H 'content-type: application/json' -d '{{}}'

Demo agents (password {DEMO_PASSWORD}; only Ada is online):
  {", ".join(a.email for a in DEMO_AGENTS)}
Stop with Ctrl-C.
"""


class DevServer(uvicorn.Server):
    """One of the three servers dev mode runs in one process. The process's signals are
    dev mode's (``stop_on_signals``): three uvicorn servers capturing them would chain
    their handlers, and the last to stop re-raises Ctrl-C as a KeyboardInterrupt."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def stop_on_signals(servers: list[DevServer]) -> None:
    """Ctrl-C or SIGTERM stops every server gracefully; a second Ctrl-C stops them at once."""

    def stop(received: signal.Signals) -> None:
        for server in servers:
            if server.should_exit and received is signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for received in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(received, stop, received)


async def run(settings: Settings) -> None:
    settings = dev_settings(settings)
    await asyncio.to_thread(upgrade, settings.database_url)
    database = Database(settings.database_url)
    await enable_demo_surveys(database, await seed_demo(database))
    bus = await start_bus(settings, client_suffix="devmode")
    servers = [
        DevServer(
            uvicorn.Config(
                create(settings, bus=bus, database=database),
                host=host,
                port=port,
                log_config=None,
                ws=WebSocketProtocol,
                ws_max_size=settings.max_request_bytes,
            )
        )
        for create, host, port in (
            (create_router, settings.router_host, settings.router_port),
            (create_ingest, settings.ingest_host, settings.ingest_port),
            (create_agent_api, settings.agent_api_host, settings.agent_api_port),
        )
    ]
    stop_on_signals(servers)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.05)
    else:
        print(walkthrough(settings), flush=True)  # noqa: T201
    try:
        await asyncio.gather(*tasks)
    finally:
        for server in servers:
            server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await bus.stop()
        await database.dispose()


def main() -> None:
    settings = get_settings()
    # A person reads dev mode's logs: console lines unless OMNI_LOG_JSON says otherwise.
    json_logs = settings.log_json if "log_json" in settings.model_fields_set else False
    configure_logging(
        service="devmode", level=settings.log_level, json=json_logs, log_pii=settings.log_pii
    )
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:  # Ctrl-C while migrating and seeding, before serving
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
