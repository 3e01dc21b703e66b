"""The public edge against the apps: every path ingest and agent_api serve must reach
that service through the rendered Ingresses, and the edge's body limits must match what
each service accepts.

The apps are built (not started) and their route tables read, so a new endpoint that
the Ingress would send to the other service fails here. The Ingress rules are resolved
the way ingress-nginx resolves them: the Ingresses of a host merge into one server, an
Exact path beats every Prefix, and the longest matching Prefix wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import Mount, WebSocketRoute

from services.agent_api.app import create_app as create_agent_api
from services.agent_api.realtime.endpoints import AGENT_SOCKET_PATH
from services.ingest.adapters.channel_endpoints import FORM_OVERHEAD_BYTES
from services.ingest.app import WEBHOOK_PREFIX
from services.ingest.app import create_app as create_ingest
from shared.bus.memory import MemoryBus
from shared.settings import Settings
from tests.ops.test_k8s_manifests import (
    OVERLAYS,
    Doc,
    config_data,
    named,
    of_kind,
    pod_labels,
    quantity,
    render,
    runs,
    selects,
)

# The first render may install kustomize (go install).
pytestmark = pytest.mark.timeout(900)

NGINX = "nginx.ingress.kubernetes.io/"
# Served by every service for the cluster only (probes, Prometheus) or for a developer
# looking at one service: none of them is published on the public host.
INTERNAL_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
WEBSOCKET_TIMEOUT_SECONDS = 3600
SERVICE_MODULES = ("services.ingest", "services.agent_api", "services.router")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@dataclass(frozen=True)
class EdgePath:
    ingress: Doc
    host: str
    path: str
    path_type: str
    service: str

    def matches(self, request_path: str) -> bool:
        """Kubernetes Ingress semantics, as ingress-nginx implements them: Exact is the
        whole path; Prefix matches element by element (``/v1`` matches ``/v1/x``, not
        ``/v1x``)."""
        if self.path_type == "Exact":
            return request_path == self.path
        prefix = self.path.rstrip("/")
        return prefix == "" or request_path == prefix or request_path.startswith(prefix + "/")

    def annotation(self, key: str) -> str | None:
        value: str | None = (self.ingress["metadata"].get("annotations") or {}).get(NGINX + key)
        return value


def edge_paths(docs: list[Doc]) -> list[EdgePath]:
    return [
        EdgePath(
            ingress=ingress,
            host=rule.get("host", ""),
            path=path["path"],
            path_type=path["pathType"],
            service=path["backend"]["service"]["name"],
        )
        for ingress in of_kind(docs, "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def edge_route(docs: list[Doc], request_path: str) -> EdgePath | None:
    """The path rule a request reaches: an Exact match wins, else the longest Prefix
    (ingress-nginx merges every Ingress of a host into one server)."""
    candidates = [p for p in edge_paths(docs) if p.matches(request_path)]
    exact = [p for p in candidates if p.path_type == "Exact"]
    if exact:
        return exact[0]
    return max(candidates, key=lambda p: len(p.path.rstrip("/")), default=None)


def module_behind(docs: list[Doc], service_name: str) -> str | None:
    service = named(docs, "Service", service_name)
    if service is None:
        return None
    selector = {"matchLabels": service["spec"].get("selector") or {}}
    for deployment in of_kind(docs, "Deployment"):
        if selects(selector, pod_labels(deployment)):
            return next((m for m in SERVICE_MODULES if runs(deployment, m)), None)
    return None


@dataclass(frozen=True)
class ServedPath:
    template: str
    websocket: bool

    @property
    def example(self) -> str:
        """A concrete request path the template matches (a mount: a file under it)."""
        return re.sub(r"\{[^}]+\}", "sample-1", self.template)


def _flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # FastAPI keeps an included router whole
            for context in contexts():
                yield context.starlette_route or context.original_route
        else:
            yield route


def served_paths(
    app: FastAPI, *, websockets_ahead_of_router: Iterable[str] = ()
) -> set[ServedPath]:
    served = {ServedPath(path, websocket=True) for path in websockets_ahead_of_router}
    for route in _flat_routes(app.routes):
        path: str = route.path
        if isinstance(route, Mount):
            served.add(ServedPath(path.rstrip("/") + "/file.js", websocket=False))
        else:
            served.add(ServedPath(path, websocket=isinstance(route, WebSocketRoute)))
    return served


@pytest.fixture(scope="module")
def apps() -> dict[str, set[ServedPath]]:
    settings = Settings(environment="test", database_url="sqlite+aiosqlite:///:memory:")
    return {
        "services.ingest": served_paths(create_ingest(settings, bus=MemoryBus())),
        # agent WebSockets are answered before FastAPI's router (AgentApi.__call__)
        "services.agent_api": served_paths(
            create_agent_api(settings, bus=MemoryBus()),
            websockets_ahead_of_router=[AGENT_SOCKET_PATH],
        ),
    }


def test_the_route_tables_are_read_whole(apps: dict[str, set[ServedPath]]) -> None:
    """Guards the flattening above: a route table read wrongly would prove nothing."""
    ingest = {p.template for p in apps["services.ingest"]}
    agent_api = {p.template for p in apps["services.agent_api"]}
    assert "/v1/channels/{adapter_name}/{account_id}" in ingest
    assert "/v1/webchat/sessions/{session_id}/ws" in ingest
    assert "/v1/channels/webchat/settings" in agent_api
    assert AGENT_SOCKET_PATH in agent_api
    assert "/v1/conversations/{conversation_id}/replies" in agent_api


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_public_path_reaches_the_service_that_serves_it(
    rendered: dict[str, list[Doc]], apps: dict[str, set[ServedPath]], overlay: str
) -> None:
    docs = rendered[overlay]
    wrong: list[str] = []
    for module, paths in apps.items():
        for served in sorted(paths, key=lambda p: p.template):
            if served.template in INTERNAL_PATHS:
                continue
            route = edge_route(docs, served.example)
            if route is None:
                wrong.append(f"{served.template} ({module}) matches no Ingress path")
                continue
            reached = module_behind(docs, route.service)
            if reached != module:
                via = f"{route.path_type} {route.path}"
                wrong.append(f"{served.template} ({module}) reaches {reached} via {via}")
            elif served.websocket:
                for key in ("proxy-read-timeout", "proxy-send-timeout"):
                    value = route.annotation(key)
                    if value is None or int(value) < WEBSOCKET_TIMEOUT_SECONDS:
                        wrong.append(f"{served.template}: WebSocket behind {key} {value}")
    assert wrong == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_paths_are_not_published(rendered: dict[str, list[Doc]], overlay: str) -> None:
    published = {p: edge_route(rendered[overlay], p) for p in sorted(INTERNAL_PATHS)}
    assert {p: r.path for p, r in published.items() if r is not None} == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edge_rules_are_unambiguous(rendered: dict[str, list[Doc]], overlay: str) -> None:
    paths = edge_paths(rendered[overlay])
    assert {p.host for p in paths} == {paths[0].host}, "one public host"
    assert {p.path_type for p in paths} <= {"Exact", "Prefix"}
    keys = [(p.host, p.path, p.path_type) for p in paths]
    assert len(keys) == len(set(keys)), "a path declared twice: ingress-nginx keeps one"


def body_limit(route: EdgePath | None) -> float:
    assert route is not None
    value = route.annotation("proxy-body-size")
    assert value is not None, f"Ingress/{route.ingress['metadata']['name']}: no proxy-body-size"
    # nginx sizes: k and m are powers of 1024
    return quantity(re.sub(r"^(\d+)([kmg])$", lambda m: m[1] + m[2].upper() + "i", value))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edge_body_limits_match_the_services(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    config = config_data(docs)
    settings = Settings.model_validate(
        {
            key.removeprefix("OMNI_").lower(): value
            for key, value in config.items()
            if key in {"OMNI_MAX_REQUEST_BYTES", "OMNI_EMAIL_MAX_MESSAGE_BYTES"}
        }
        | {"environment": "test"}
    )
    # JSON API and web chat: the edge refuses what the service would refuse anyway.
    for path in ("/v1/conversations", "/v1/webchat/sessions/sample-1/messages"):
        assert body_limit(edge_route(docs, path)) == settings.max_request_bytes, path
    # Provider webhooks carry whole emails: the edge must let through what ingest reads
    # (the largest email plus the form's fields), so ingest refuses a larger one in the
    # provider's terms.
    webhook_limit = settings.email_max_message_bytes + FORM_OVERHEAD_BYTES
    webhook = edge_route(docs, WEBHOOK_PREFIX + "sendgrid/sample-1")
    assert body_limit(webhook) >= webhook_limit
    assert body_limit(webhook) <= 2 * webhook_limit, "no needlessly open door"
