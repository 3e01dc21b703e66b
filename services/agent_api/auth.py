"""Agent authentication: scrypt password hashes and JWT bearer tokens (PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from shared.settings import Settings
from shared.websocket import TokenRejectedError

TOKEN_ALGORITHM = "HS256"  # noqa: S105 - algorithm name
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    encoded_salt = base64.b64encode(salt).decode()
    encoded_digest = base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encoded_salt}${encoded_digest}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate, base64.b64decode(digest))


@dataclass(frozen=True)
class AgentClaims:
    agent_id: uuid.UUID
    workspace_id: uuid.UUID
    role: str


def issue_agent_token(
    claims: AgentClaims, settings: Settings, *, now: datetime | None = None
) -> tuple[str, int]:
    issued = now or datetime.now(UTC)
    ttl = settings.jwt_ttl_seconds
    token = jwt.encode(
        {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": str(claims.agent_id),
            "ws": str(claims.workspace_id),
            "role": claims.role,
            "iat": issued,
            "exp": issued + timedelta(seconds=ttl),
        },
        settings.jwt_secret.get_secret_value(),
        algorithm=TOKEN_ALGORITHM,
    )
    return token, ttl


def verify_agent_token(token: str, settings: Settings) -> AgentClaims:
    try:
        decoded = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[TOKEN_ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        return AgentClaims(
            agent_id=uuid.UUID(str(decoded["sub"])),
            workspace_id=uuid.UUID(str(decoded["ws"])),
            role=str(decoded.get("role", "agent")),
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenRejectedError("token expired") from exc
    except (jwt.PyJWTError, KeyError, ValueError) as exc:
        raise TokenRejectedError("invalid token") from exc
