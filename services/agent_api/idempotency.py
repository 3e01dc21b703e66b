"""``Idempotency-Key`` on POST: a retried create answers like the first attempt did.

The first request with a key claims it (a row in ``idempotency_keys``, unique per
caller and key) before the endpoint runs, so a concurrent duplicate finds the claim
and gets 409 instead of creating twice. A 2xx answer is stored on the claim and
replayed to later requests with the same key and the same request (method, path,
query, body bytes), marked ``Idempotent-Replayed: true``; the same key with a
different request gets 422. Any other answer releases the claim, so the client can
retry. Records live ``idempotency_ttl_seconds``; keys are scoped by the SHA-256 of the
caller's credential, so one caller can never read another's answers.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.agent_api.rest import credential_fingerprint
from shared.db.models import IdempotencyRecord, utcnow
from shared.db.session import Database
from shared.problems import problem_response

log = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = b"idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
# A claim this old without an answer belongs to a process that died mid-request.
ABANDONED_AFTER = timedelta(seconds=60)
PURGE_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True)
class _Replay:
    status: int
    body: str
    content_type: str | None


@dataclass(frozen=True)
class _Refusal:
    status: int
    detail: str


@dataclass(frozen=True)
class _Claimed:
    record_id: uuid.UUID


class IdempotencyMiddleware:
    """ASGI middleware; needs ``app.state.agent_api`` (database, settings) once started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._last_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        raw_key = next((v for n, v in headers if n == IDEMPOTENCY_HEADER), None)
        caller = credential_fingerprint(headers)
        state = getattr(scope["app"].state, "agent_api", None) if "app" in scope else None
        if raw_key is None or caller is None or state is None:
            # No key, or no credential to scope it by (the endpoint answers 401 anyway).
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not _KEY.match(key):
            await _problem(
                scope, receive, send, 400, "Idempotency-Key must be 1-200 visible ASCII characters."
            )
            return
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        database: Database = state.database
        ttl = timedelta(seconds=state.settings.idempotency_ttl_seconds)
        fingerprint = _request_fingerprint(scope, body)
        await self._purge_now_and_then(database, ttl)
        outcome = await _claim(database, caller, key, fingerprint, scope, ttl)
        if isinstance(outcome, _Replay):
            await _replay(send, outcome)
            return
        if isinstance(outcome, _Refusal):
            await _problem(scope, receive, send, outcome.status, outcome.detail)
            return
        await self._run(scope, receive, send, body, database, outcome.record_id)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        database: Database,
        record_id: uuid.UUID,
    ) -> None:
        body_sent = False
        status = 0
        content_type: str | None = None
        chunks: list[bytes] = []

        async def replay_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        finished = False

        async def finish() -> None:
            # Before the client has the whole answer, so a retry it sends right after
            # sees the stored result (or no claim), never a stale in-flight one.
            nonlocal finished
            if finished:
                return
            finished = True
            if 200 <= status < 300:
                await _store(database, record_id, status, b"".join(chunks), content_type)
            else:
                await _release(database, record_id)

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await finish()
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            if not finished:
                finished = True
                await _release(database, record_id)
            raise
        await finish()

    async def _purge_now_and_then(self, database: Database, ttl: timedelta) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        async with database.sessions() as session:
            await session.execute(
                delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - ttl)
            )
            await session.commit()


def _request_fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b"")):
        digest.update(part + b"\0")
    digest.update(body)
    return digest.hexdigest()


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _claim(
    database: Database, caller: str, key: str, fingerprint: str, scope: Scope, ttl: timedelta
) -> _Replay | _Refusal | _Claimed:
    mine = (IdempotencyRecord.scope == caller, IdempotencyRecord.key == key)
    for _attempt in range(2):
        async with database.sessions() as session:
            now = utcnow()
            # Expired records and abandoned claims no longer hold the key.
            await session.execute(
                delete(IdempotencyRecord).where(
                    *mine,
                    or_(
                        IdempotencyRecord.created_at < now - ttl,
                        (IdempotencyRecord.status_code.is_(None))
                        & (IdempotencyRecord.created_at < now - ABANDONED_AFTER),
                    ),
                )
            )
            record = await session.scalar(select(IdempotencyRecord).where(*mine))
            if record is not None:
                await session.commit()
                return _judge(record, fingerprint)
            claim = IdempotencyRecord(
                id=uuid.uuid4(),
                scope=caller,
                key=key,
                method=scope["method"],
                path=scope["path"][:500],
                request_hash=fingerprint,
                created_at=now,
            )
            session.add(claim)
            try:
                await session.commit()
            except IntegrityError:  # a concurrent duplicate claimed it first; judge theirs
                await session.rollback()
                continue
            return _Claimed(claim.id)
    return _Refusal(409, "A request with this Idempotency-Key is still in progress.")


def _judge(record: IdempotencyRecord, fingerprint: str) -> _Replay | _Refusal:
    if record.request_hash != fingerprint:
        return _Refusal(
            422,
            "This Idempotency-Key was used for a different request; use a new key for it.",
        )
    if record.status_code is None or record.response_body is None:
        return _Refusal(409, "A request with this Idempotency-Key is still in progress.")
    return _Replay(record.status_code, record.response_body, record.content_type)


async def _store(
    database: Database,
    record_id: uuid.UUID,
    status: int,
    body: bytes,
    content_type: str | None,
) -> None:
    try:
        text = body.decode()
    except UnicodeDecodeError:  # only JSON answers are stored; anything else is not replayed
        await _release(database, record_id)
        return
    async with database.sessions() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id)
            .values(status_code=status, response_body=text, content_type=content_type)
        )
        await session.commit()


async def _release(database: Database, record_id: uuid.UUID) -> None:
    try:
        async with database.sessions() as session:
            await session.execute(
                delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id)
            )
            await session.commit()
    except Exception as exc:  # the claim then expires as abandoned
        log.warning("releasing an idempotency claim failed", error=str(exc))


async def _replay(send: Send, replay: _Replay) -> None:
    body = replay.body.encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-length", str(len(body)).encode()),
        (REPLAYED_HEADER.lower().encode(), b"true"),
    ]
    if replay.content_type:
        headers.append((b"content-type", replay.content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": replay.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _problem(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    response = problem_response(Request(scope), status, detail)
    await response(scope, receive, send)
