"""ingest's busiest routes served ahead of FastAPI's middleware stack and router.

Provider webhooks (``POST /v1/channels/{adapter}/{account}[/{variant}]``) and web-chat
messages (``POST /v1/webchat/sessions/{id}/messages``) are nearly all of ingest's
traffic. Through the ASGI middleware stack, FastAPI's router and its dependency
machinery every such request resumed some twenty coroutine frames at each await and
built request-scoped exit stacks and dependency caches it does not use: about a third
of ingest's CPU per request (benchmark B1). Here the same endpoint functions are called
directly; the routes stay declared on the FastAPI app, which documents them in the
OpenAPI and serves every other method and path as before.

What the stack gives these requests is applied here too, in the same order: the
correlation id (bound for logs, echoed in the response), for web chat the JSON API's
body limit (413) and storable-text check (422), problem+json for ``ProblemError`` and
for anything unexpected (500).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.adapters.channel_endpoints import serve_webhook
from services.ingest.adapters.webchat_endpoints import post_message
from services.ingest.deps import IngestState
from shared.correlation import CorrelationMiddleware
from shared.http import BodySizeLimitMiddleware, StorableTextMiddleware
from shared.problems import ProblemError, problem_of, unexpected_error_response

CHANNEL_WEBHOOK: Final = re.compile(r"/v1/channels/([^/]+)/([^/]+)(?:/([^/]+))?")
CHAT_MESSAGE: Final = re.compile(r"/v1/webchat/sessions/([^/]+)/messages")

Endpoint = Callable[[Request, IngestState], Awaitable[Response]]


class IngestApi(FastAPI):
    """FastAPI, with the hot POSTs (see the module) served ahead of it.

    ``serve_chat_messages_with(max_bytes)`` must be called once the JSON API's body
    limit is known; until then web-chat messages go through the stack like any route."""

    _chat_messages: ASGIApp | None = None
    _routes_by_template: dict[str, BaseRoute | None]

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._routes_by_template = {}
        self._webhooks: ASGIApp = CorrelationMiddleware(self._call_endpoint)

    def serve_chat_messages_with(self, *, max_bytes: int) -> None:
        self._chat_messages = CorrelationMiddleware(
            BodySizeLimitMiddleware(
                StorableTextMiddleware(self._call_endpoint), max_bytes=max_bytes
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            if (webhook := CHANNEL_WEBHOOK.fullmatch(path)) is not None:
                adapter_name, account_id, variant = webhook.groups()
                params = {"adapter_name": adapter_name, "account_id": account_id}
                template = "/v1/channels/{adapter_name}/{account_id}"
                if variant is not None:
                    params["variant"] = variant
                    template += "/{variant}"
                scope["route"] = self._declared_route(template)
                await self._serve(scope, receive, send, params, _channel_webhook, self._webhooks)
                return
            chat = CHAT_MESSAGE.fullmatch(path)
            if chat is not None and self._chat_messages is not None:
                params = {"session_id": chat.group(1)}
                scope["route"] = self._declared_route("/v1/webchat/sessions/{session_id}/messages")
                await self._serve(scope, receive, send, params, _chat_message, self._chat_messages)
                return
        await super().__call__(scope, receive, send)

    def _declared_route(self, template: str) -> BaseRoute | None:
        """The app's declared POST route for ``template`` (what the router would have put
        in the scope: tracing names the request's span after it)."""
        if template not in self._routes_by_template:
            self._routes_by_template[template] = next(
                (
                    route
                    for route in _declared_routes(self.routes)
                    if route.path == template and "POST" in (route.methods or ())
                ),
                None,
            )
        return self._routes_by_template[template]

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path_params: dict[str, str],
        endpoint: Endpoint,
        app: ASGIApp,
    ) -> None:
        scope["app"] = self
        scope["path_params"] = path_params
        scope["omniroute.endpoint"] = endpoint
        await app(scope, receive, send)

    async def _call_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        endpoint: Endpoint = scope["omniroute.endpoint"]
        try:
            response = await endpoint(request, self.state.ingest)
        except ProblemError as exc:
            response = problem_of(request, exc)
        except Exception as exc:
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)


def _declared_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI keeps an included router
    whole, as its ``original_router``)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _declared_routes(included.routes)


async def _channel_webhook(request: Request, ingest: IngestState) -> Response:
    params = request.path_params
    return await serve_webhook(request, ingest, params["adapter_name"], params["account_id"])


async def _chat_message(request: Request, ingest: IngestState) -> Response:
    return await post_message(request.path_params["session_id"], request, ingest)
