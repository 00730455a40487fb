"""Bearer credentials: JWT access tokens (HS256 with ``JWT_SECRET``; RS256/ES256 with a
configured public key or JWKS) and App Passwords.

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
import time
import uuid
from dataclasses import dataclass

import jwt

from ingest_api import jwks
from shared import jwt_keys
from shared.config import DEFAULT_JWT_MAX_LIFETIME_SECONDS, Settings

APP_PASSWORD_PREFIX = "app_a7_"
LOOKUP_PREFIX_LENGTH = 12
_APP_PASSWORD_RE = re.compile(r"^app_a7_[A-Za-z0-9_-]{32,}$")
JWT_ALGORITHM = "HS256"


class InvalidCredentials(Exception):
    """The bearer token is malformed, forged, expired or unknown; for a JWT the message
    is the sentence the caller is answered with."""


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


def mint_jwt(
    user_id: uuid.UUID, secret: str, ttl_seconds: int = 3600, *, audience: str | None = None, issuer: str | None = None
) -> str:
    """An HS256 access token; ``audience``/``issuer`` are those the service checks
    (``JWT_AUDIENCE``/``JWT_ISSUER``), so its own tokens pass them."""
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(seconds=ttl_seconds)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


class JwtVerifier:
    """Verifies access tokens: HS256 with ``JWT_SECRET`` always; RS256/ES256 with
    ``JWT_PUBLIC_KEY`` or a ``JWT_JWKS_URL`` key when one is configured.

    Each key is used with the one algorithm pinned to it. The token's ``alg`` header only
    chooses among the configured (key, algorithm) pairs, and ``decode`` is given that
    single algorithm: ``none``, HS256 signed with a public key, or a key of one type
    claimed under another's algorithm all fail. With only ``JWT_SECRET`` configured the
    header is not even read first: the path is the one of before.
    """

    def __init__(
        self,
        secret: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime_seconds: int = DEFAULT_JWT_MAX_LIFETIME_SECONDS,
        public_key: str | None = None,
        jwks_url: str | None = None,
    ):
        self._secret = secret
        self._audience = audience
        self._issuer = issuer
        self.max_lifetime_seconds = max_lifetime_seconds
        self._options = {"require": ["sub", "exp"] + ["aud"] * bool(audience) + ["iss"] * bool(issuer)}
        self._public_key = jwt_keys.load_public_key(public_key) if public_key else None
        self.jwks = jwks.JwksKeys(jwks_url) if jwks_url else None
        self._hs256_only = self._public_key is None and self.jwks is None

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        return cls(
            settings.jwt_secret,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
            public_key=settings.jwt_public_key,
            jwks_url=settings.jwt_jwks_url,
        )

    def verify(self, token: str) -> tuple[uuid.UUID, float]:
        """The ``sub`` and ``exp`` (Unix seconds) of a valid token. ``InvalidCredentials``
        (its message a sentence for the caller) for anything else, or
        ``jwks.SigningKeysUnavailable`` when the JWKS endpoint cannot be asked."""
        key, algorithm = (self._secret, JWT_ALGORITHM) if self._hs256_only else self._key_for(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self._audience, issuer=self._issuer, options=self._options
            )
            user_id, expires_at = uuid.UUID(claims["sub"]), float(claims["exp"])
            issued_at = float(claims["iat"]) if "iat" in claims else None
        # Only a token whose signature holds gets this far: the reason is told.
        except jwt.InvalidAudienceError:
            raise InvalidCredentials(NOT_FOR_THIS_SERVICE) from None
        except jwt.InvalidIssuerError:
            raise InvalidCredentials(NOT_FROM_THE_ISSUER) from None
        except jwt.ImmatureSignatureError:
            raise InvalidCredentials("The access token is not valid yet (nbf or iat in the future).") from None
        except jwt.MissingRequiredClaimError as error:
            missing = {"aud": NOT_FOR_THIS_SERVICE, "iss": NOT_FROM_THE_ISSUER}
            raise InvalidCredentials(missing.get(error.claim, INVALID_TOKEN)) from None
        except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError, OverflowError):
            raise InvalidCredentials(INVALID_TOKEN) from None
        # Checked on both ends: a token issued for longer is refused all its life, not
        # just until its last day; one without iat by what it has left.
        longest = self.max_lifetime_seconds
        if expires_at - time.time() > longest or (issued_at is not None and expires_at - issued_at > longest):
            raise InvalidCredentials(
                f"The access token is valid for longer than the {longest} seconds this service accepts; "
                "use one that expires sooner."
            )
        return user_id, expires_at

    def _key_for(self, token: str) -> tuple[object, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidCredentials(INVALID_TOKEN) from None
        algorithm = header.get("alg")
        if algorithm == JWT_ALGORITHM:
            return self._secret, JWT_ALGORITHM
        if self._public_key is not None and algorithm == self._public_key[1]:
            return self._public_key
        if self.jwks is not None and algorithm in jwt_keys.PUBLIC_KEY_ALGORITHMS:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise InvalidCredentials("The access token names no signing key (kid).")
            try:
                key, pinned = self.jwks.key(kid)
            except jwks.UnknownSigningKey:
                raise InvalidCredentials("The access token's signing key (kid) is unknown.") from None
            if pinned == algorithm:
                return key, pinned
        raise InvalidCredentials(INVALID_TOKEN)


INVALID_TOKEN = "The access token is invalid or expired."
NOT_FOR_THIS_SERVICE = "The access token is not meant for this service (aud)."
NOT_FROM_THE_ISSUER = "The access token is not from the issuer this service trusts (iss)."
