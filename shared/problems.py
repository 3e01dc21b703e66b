"""RFC 9457 problem details: one way every HTTP service reports errors."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from shared.metrics import REJECTED_REQUESTS
from shared.transient import is_conflict_error, is_transient_error

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


# RFC 9110's names where they changed since the phrases ``http.HTTPStatus`` carries.
_RFC_9110_TITLES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def status_title(status: int) -> str:
    """The title of an ``about:blank`` problem: the status's phrase (RFC 9457), the same
    words on every answer; what went wrong is the ``detail``."""
    if status in _RFC_9110_TITLES:
        return _RFC_9110_TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not know (an adapter's own)
        return "Client Error" if 400 <= status < 500 else "Error"


class ProblemError(Exception):
    """A domain error that carries its HTTP status and a human explanation."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        problem_type: str = "about:blank",
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.headers = headers
        self.status = status
        self.detail = detail
        self.title = title or status_title(status)
        self.problem_type = problem_type
        self.extra = extra or {}


def problem_response(
    request: HTTPConnection,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    problem_type: str = "about:blank",
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type,
        "title": title or status_title(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **(extra or {}),
    }
    service = getattr(request.app.state, "service_name", "omniroute")
    REJECTED_REQUESTS.labels(service=service, status=str(status)).inc()
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def problem_of(request: Request, exc: ProblemError) -> JSONResponse:
    """The answer to a ``ProblemError`` raised while serving ``request``."""
    return problem_response(
        request,
        exc.status,
        exc.detail,
        title=exc.title,
        problem_type=exc.problem_type,
        extra=exc.extra,
        headers=exc.headers,
    )


# How long a client should wait before trying again after a 503.
RETRY_AFTER_SECONDS = 1


def unexpected_error_response(
    request: Request, exc: Exception, *, logged_elsewhere: bool = False
) -> JSONResponse:
    """The answer to an exception nothing else handled: 503 with Retry-After when the
    database or the broker is unreachable or restarting, or the transaction lost to a
    concurrent one (deadlock, serialization failure): trying again shortly can succeed,
    and providers retry webhooks on it; else 500. problem+json either way."""
    if is_transient_error(exc) or is_conflict_error(exc):
        log.warning("request failed; the client may try again", error=str(exc))
        detail = (
            "The request met a concurrent change; try again."
            if is_conflict_error(exc)
            else "A service this request needs is unavailable for a moment; try again shortly."
        )
        return problem_response(
            request, 503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    if not logged_elsewhere:
        log.error("request failed", path=request.url.path, exc_info=exc)
    return problem_response(request, 500, "The request could not be processed.")


# Failures of the infrastructure a request needs. Handled by class, so the answer is
# made inside the app's middleware (CORS, correlation id) like any other; the final
# catch-all for everything else is Starlette's outermost layer.
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    PoolTimeoutError,
    OSError,
    KafkaError,
)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)  # noqa: S101 - registered for this type only
        return problem_of(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        json_invalid = any(e["type"] == "json_invalid" for e in errors)
        fields = ", ".join(
            ".".join(str(part) for part in e["loc"]) + f": {e['msg']}" for e in errors[:5]
        )
        return problem_response(
            request,
            422 if not json_invalid else 400,
            "The request body is not valid JSON."
            if json_invalid
            else f"The request does not match the schema ({fields}).",
            extra={"errors": errors},
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        return problem_response(
            request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    async def on_infrastructure(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(request, exc)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server logs the exception with its traceback after this answer.
        return unexpected_error_response(request, exc, logged_elsewhere=True)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for error_class in INFRASTRUCTURE_ERRORS:
        app.add_exception_handler(error_class, on_infrastructure)
    # Starlette's last resort (its ServerErrorMiddleware, outside the app's middleware)
    # answers with this, then lets the exception propagate to the server as before.
    app.add_exception_handler(Exception, on_unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "examples": ["about:blank"]},
        "title": {"type": "string", "examples": ["Not Found"]},
        "status": {"type": "integer", "examples": [404]},
        "detail": {"type": "string", "examples": ["No conversation 3f2b…."]},
        "instance": {"type": "string", "examples": ["/v1/conversations/3f2b…"]},
        "errors": {
            "type": "array",
            "description": "For 400/422: each invalid field.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

_PROBLEM_STATUSES = {
    400: "Malformed request (e.g. invalid JSON, a cursor this API did not issue).",
    401: "Missing, invalid or expired credentials.",
    403: "Authenticated, but not allowed to do this.",
    404: "Not found in the caller's workspace (other workspaces' ids answer 404 too).",
    409: "Conflicts with the current state (e.g. already resolved).",
    413: "The request body is too large.",
    422: "The request does not match the schema or the rules; `errors` names the fields.",
    429: "Too many requests; retry after `Retry-After` seconds.",
}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}},
    }
    for status, description in _PROBLEM_STATUSES.items()
}
