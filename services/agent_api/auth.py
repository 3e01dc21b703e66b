"""Agent authentication: scrypt password hashes and JWT bearer tokens (PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
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
    """Who is calling: an agent (token) or an integration (API key, ``agent_id`` None)."""

    agent_id: uuid.UUID | None
    workspace_id: uuid.UUID
    role: str
    api_key_id: uuid.UUID | None = None

    @property
    def is_supervisor(self) -> bool:
        return self.role in ("supervisor", "admin")


API_KEY_PREFIX = "omk_"


def new_api_key() -> tuple[str, str, str]:
    """(full key shown once, lookup prefix, SHA-256 hash stored)."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, _, rest = key[len(API_KEY_PREFIX) :].partition("_")
    return prefix if prefix and rest else None


def signing_keys(settings: Settings) -> dict[str, str]:
    """kid → HS256 key. ``OMNI_JWT_KEYS`` (JSON) enables rotation; else one default key."""
    if settings.jwt_keys:
        return {kid: key.get_secret_value() for kid, key in settings.jwt_keys.items()}
    return {"default": settings.jwt_secret.get_secret_value()}


def active_kid(settings: Settings) -> str:
    keys = signing_keys(settings)
    if settings.jwt_active_kid and settings.jwt_active_kid in keys:
        return settings.jwt_active_kid
    return next(iter(keys))


def issue_agent_token(
    claims: AgentClaims, settings: Settings, *, now: datetime | None = None
) -> tuple[str, int]:
    issued = now or datetime.now(UTC)
    ttl = settings.jwt_ttl_seconds
    kid = active_kid(settings)
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
        signing_keys(settings)[kid],
        algorithm=TOKEN_ALGORITHM,
        headers={"kid": kid},
    )
    return token, ttl


def verify_agent_token(token: str, settings: Settings) -> AgentClaims:
    try:
        kid = jwt.get_unverified_header(token).get("kid", "default")
        key = signing_keys(settings).get(str(kid))
        if key is None:
            raise TokenRejectedError("token signed with an unknown key (kid)")
        decoded = jwt.decode(
            token,
            key,
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
