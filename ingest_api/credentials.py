"""Bearer credentials: HS256 JWT access tokens and App Passwords.

App Passwords are 256-bit random secrets, so a single SHA-256 is the right hash (a slow
password hash protects low-entropy human passwords, not these). Lookup is by a short
prefix of the secret; the comparison of the full hash is constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass

import jwt

APP_PASSWORD_PREFIX = "app_a7_"
LOOKUP_PREFIX_LENGTH = 12
_APP_PASSWORD_RE = re.compile(r"^app_a7_[A-Za-z0-9_-]{32,}$")
JWT_ALGORITHM = "HS256"


class InvalidCredentials(Exception):
    """The bearer token is malformed, forged, expired or unknown."""


@dataclass(frozen=True)
class NewAppPassword:
    token: str  # shown once, never stored
    lookup_prefix: str
    password_hash: str


def hash_app_password(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_app_password() -> NewAppPassword:
    token = APP_PASSWORD_PREFIX + secrets.token_urlsafe(32)
    return NewAppPassword(token, lookup_prefix_of(token), hash_app_password(token))


def is_app_password(token: str) -> bool:
    return token.startswith(APP_PASSWORD_PREFIX)


def lookup_prefix_of(token: str) -> str:
    if not _APP_PASSWORD_RE.match(token):
        raise InvalidCredentials("malformed App Password")
    return token[len(APP_PASSWORD_PREFIX) : len(APP_PASSWORD_PREFIX) + LOOKUP_PREFIX_LENGTH]


def app_password_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_app_password(token), stored_hash)


def mint_jwt(user_id: uuid.UUID, secret: str, ttl_seconds: int = 3600) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(seconds=ttl_seconds)}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def verify_jwt(token: str, secret: str) -> tuple[uuid.UUID, float]:
    """The ``sub`` and ``exp`` (Unix seconds) of a valid HS256 token; anything else
    raises ``InvalidCredentials``."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],  # pins the algorithm: "none" and others are refused
            options={"require": ["sub", "exp"]},
        )
        return uuid.UUID(claims["sub"]), float(claims["exp"])
    except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError) as error:
        raise InvalidCredentials(str(error) or "invalid token") from None


def user_id_from_jwt(token: str, secret: str) -> uuid.UUID:
    """The ``sub`` of a valid HS256 token; anything else raises ``InvalidCredentials``."""
    return verify_jwt(token, secret)[0]
