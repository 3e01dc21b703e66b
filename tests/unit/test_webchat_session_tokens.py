"""The web-chat token check keeps its verdicts when verified tokens are cached."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.adapters.webchat import (
    ChatSession,
    VerifiedSessionTokens,
    issue_session_token,
)
from shared.websocket import TokenRejectedError

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"


def session() -> ChatSession:
    return ChatSession(
        session_id=f"wcs_{uuid.uuid4().hex}",
        workspace_id=uuid.uuid4(),
        display_name="Ada",
        email="ada@example.com",
    )


def token_for(chat: ChatSession, now: datetime, *, ttl: timedelta = timedelta(hours=1)) -> str:
    token, _ = issue_session_token(chat, secret=SECRET, ttl=ttl, now=now)
    return token


def test_a_cached_token_gives_the_same_session() -> None:
    issued = datetime.now(UTC)  # the first decode checks the real clock
    tokens = VerifiedSessionTokens()
    chat = session()
    token = token_for(chat, issued)
    at = issued.timestamp() + 60
    assert tokens.verify(token, secret=SECRET, now=at) == chat
    assert tokens.verify(token, secret=SECRET, now=at + 1) == chat


def test_a_token_that_expired_after_it_was_cached_is_refused() -> None:
    issued = datetime.now(UTC)  # the first decode checks the real clock
    tokens = VerifiedSessionTokens()
    token = token_for(session(), issued, ttl=timedelta(minutes=5))
    tokens.verify(token, secret=SECRET, now=issued.timestamp() + 60)
    with pytest.raises(TokenRejectedError):
        tokens.verify(token, secret=SECRET, now=issued.timestamp() + 5 * 60)
    with pytest.raises(TokenRejectedError):  # and stays refused
        tokens.verify(token, secret=SECRET, now=issued.timestamp() + 6 * 60)


def test_a_tampered_or_foreign_token_is_refused_even_after_the_real_one_was_cached() -> None:
    issued = datetime.now(UTC)  # the first decode checks the real clock
    tokens = VerifiedSessionTokens()
    token = token_for(session(), issued)
    at = issued.timestamp() + 60
    tokens.verify(token, secret=SECRET, now=at)
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(TokenRejectedError):
        tokens.verify(f"{head}.{payload}.{flipped}", secret=SECRET, now=at)
    with pytest.raises(TokenRejectedError):  # the same token under another secret
        tokens.verify(token, secret=SECRET + "-rotated", now=at)


def test_the_cache_is_bounded() -> None:
    issued = datetime.now(UTC)  # the first decode checks the real clock
    tokens = VerifiedSessionTokens(max_entries=3)
    chats = [session() for _ in range(5)]
    at = issued.timestamp() + 60
    for chat in chats:
        assert tokens.verify(token_for(chat, issued), secret=SECRET, now=at) == chat
    assert len(tokens) == 3
