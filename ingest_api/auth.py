"""Who is calling: a Bearer JWT or App Password of an active superadmin.

401 when the credential itself is missing, malformed, forged, expired, unknown, revoked or
belongs to an inactive user; 403 when it is valid but the user is not ``superadmin`` in an
active membership of an active organization.

A JWT whose key is fetched from ``JWT_JWKS_URL`` is answered 503 with ``Retry-After``
while that endpoint cannot give the key (see ``ingest_api.jwks``).

A caller verified against the database is remembered for ``AUTH_CACHE_SECONDS`` so the
request path needs no PostgreSQL round trip. App Password revocation stays immediate:
``app-passwords revoke`` also marks the password in Redis, and the publish script
refuses a marked password atomically with the append (see ``shared.intake``).

A credential that is not cached costs a query; what refused ones may cost is bounded
(``ingest_api.lookup_limits``): past the bound, 429 with ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
import uuid
from dataclasses import dataclass

import cachetools
import redis
import sqlalchemy as sa
from flask import current_app, g, request

from ingest_api import credentials, jwks, lookup_limits
from ingest_api.errors import ApiError
from shared import db, models, revocation_marks

# Writing last_used_at on every request would cost a write per event; once a minute is
# what an operator needs to tell a live App Password from an abandoned one.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
# Redis, which holds the revocation marks, is back within seconds when it restarts.
REVOCATION_RETRY_AFTER_SECONDS = "2"


@dataclass(frozen=True)
class Caller:
    user_id: uuid.UUID
    app_password_id: uuid.UUID | None


class CallerCache:
    """Verified callers by credential (the App Password or JWT itself, held in this
    process's memory only), for a few seconds, and never past the credential's expiry;
    at most 10,000, the least recently used dropped first."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        # Each entry is (caller, seconds to keep it), so each has its own time to live.
        self._entries = cachetools.TLRUCache(
            maxsize=10_000, ttu=lambda _key, entry, now: now + entry[1], timer=time.monotonic
        )
        self._lock = threading.Lock()

    def get(self, key: str) -> Caller | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: str, caller: Caller, *, expires_at: float | None = None) -> None:
        """Remember ``caller``; ``expires_at`` (Unix seconds) caps how long."""
        seconds = self.ttl_seconds if expires_at is None else min(self.ttl_seconds, expires_at - time.time())
        if seconds > 0:
            with self._lock:
                self._entries[key] = (caller, seconds)


def revoked_unauthorized() -> ApiError:
    return _unauthorized("This App Password has been revoked.")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="agent700"'})


_superadmin_membership = (
    sa.select(sa.literal(True))
    .select_from(models.OrganizationMembership)
    .join(models.Organization, models.Organization.id == models.OrganizationMembership.organization_id)
    .join(models.membership_roles, models.membership_roles.c.membership_id == models.OrganizationMembership.id)
    .join(models.Role, models.Role.id == models.membership_roles.c.role_id)
    .where(
        models.OrganizationMembership.user_id == models.User.id,
        models.OrganizationMembership.is_active,
        models.Organization.is_active,
        models.Role.name == models.SUPERADMIN,
    )
    .exists()
)

_USER_BY_ID = sa.select(models.User.is_active, _superadmin_membership.label("is_superadmin")).where(
    models.User.id == sa.bindparam("user_id")
)

_USER_BY_APP_PASSWORD = (
    sa.select(
        models.AppPassword.id,
        models.AppPassword.password_hash,
        models.AppPassword.revoked_at,
        models.AppPassword.last_used_at,
        models.User.id.label("user_id"),
        models.User.is_active,
        _superadmin_membership.label("is_superadmin"),
    )
    .join(models.User, models.User.id == models.AppPassword.user_id)
    .where(models.AppPassword.lookup_prefix == sa.bindparam("lookup_prefix"))
)


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("Missing Authorization header; send 'Authorization: Bearer <token>'.")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("The Authorization header must use the Bearer scheme.")
    return token.strip()


def authenticate() -> Caller:
    """The verified caller of this request, or an ``ApiError`` 401/403 (429 while failed
    lookups are over their bound, see ``ingest_api.lookup_limits``)."""
    token = bearer_token()
    cache: CallerCache = current_app.extensions["caller_cache"]
    # A credential verified moments ago needs neither its hash or signature checked nor
    # the database asked again.
    if (cached := cache.get(token)) is not None:
        return cached
    if credentials.is_app_password(token):
        try:
            lookup_prefix = credentials.lookup_prefix_of(token)
        except credentials.InvalidCredentials:
            raise _unauthorized("The App Password is malformed.") from None
        caller = _looked_up(token, lambda connection: _app_password_caller(connection, token, lookup_prefix))
        expires_at = None
    else:
        user_id, expires_at = _verified_jwt(token)
        caller = _looked_up(token, lambda connection: _jwt_caller(connection, user_id))
    cache.put(token, caller, expires_at=expires_at)
    return caller


class _Refused(Exception):
    """The database refused the credential: ``error`` is the answer; ``lasting`` when the
    same credential can never pass (unknown or revoked App Password)."""

    def __init__(self, error: ApiError, *, lasting: bool = False):
        self.error = error
        self.lasting = lasting


def _looked_up(token: str, find) -> Caller:
    """``find(connection)``'s caller, within the bounds on failed lookups: a lasting
    refusal is answered from memory, and past the bound a 429 comes before any query."""
    limits: lookup_limits.LookupLimits = current_app.extensions["lookup_limits"]
    digest = lookup_limits.credential_digest(token)
    if (sentence := limits.lasting_refusal(digest)) is not None:
        raise _unauthorized(sentence)
    try:
        lookup = limits.admit(digest, request.remote_addr)
    except lookup_limits.TooManyFailedLookups as limited:
        where = " from this address" if limited.per_source else ""
        raise ApiError(
            429,
            f"Too many requests with unknown or refused credentials{where}; nothing was recorded. "
            "Retry after Retry-After seconds with a valid credential.",
            headers={"Retry-After": str(limited.retry_after_seconds)},
        ) from None
    try:
        with db.engine_for(current_app.config["SETTINGS"].database_url).connect() as connection:
            caller = find(connection)
    except _Refused as refused:
        limits.failed(lookup, refused.error.message if refused.lasting else None)
        raise refused.error from None
    limits.succeeded(lookup)
    return caller


def _verified_jwt(token: str) -> tuple[uuid.UUID, float]:
    try:
        return current_app.extensions["jwt_verifier"].verify(token)
    except credentials.InvalidCredentials as error:
        raise _unauthorized(str(error)) from None
    except jwks.SigningKeysUnavailable as error:
        # Not the caller's fault and not a bug: the same token may pass in a moment.
        raise ApiError(
            503,
            "The keys that verify access tokens cannot be fetched right now; nothing was recorded. Retry later.",
            headers={"Retry-After": str(error.retry_after_seconds)},
        ) from None


def _app_password_caller(connection: sa.Connection, token: str, lookup_prefix: str) -> Caller:
    row = connection.execute(_USER_BY_APP_PASSWORD, {"lookup_prefix": lookup_prefix}).first()
    if row is None or not credentials.app_password_matches(token, row.password_hash):
        raise _Refused(_unauthorized("Unknown App Password."), lasting=True)
    if row.revoked_at is not None:
        raise _Refused(revoked_unauthorized(), lasting=True)
    _check_superadmin(row)
    _touch_last_used(connection, row)
    return Caller(row.user_id, row.id)


def _jwt_caller(connection: sa.Connection, user_id: uuid.UUID) -> Caller:
    row = connection.execute(_USER_BY_ID, {"user_id": user_id}).first()
    if row is None:
        raise _Refused(_unauthorized("The access token's user does not exist."))
    _check_superadmin(row)
    return Caller(user_id, None)


def _check_superadmin(row) -> None:
    if not row.is_active:
        raise _Refused(_unauthorized("The user is inactive."))
    if not row.is_superadmin:
        raise _Refused(ApiError(403, "The caller must be superadmin in an active membership of an active organization."))


def _touch_last_used(connection: sa.Connection, row) -> None:
    now = dt.datetime.now(dt.UTC)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        connection.execute(
            sa.update(models.AppPassword).where(models.AppPassword.id == row.id).values(last_used_at=now)
        )
        connection.commit()


def refuse_if_revoked() -> None:
    """401 if the caller's App Password was revoked since it was cached: revocation is
    immediate (its mark in Redis), caching or not. A caller with a JWT passes."""
    if g.caller.app_password_id is None:
        return
    try:
        revoked = revocation_marks.is_revoked(current_app.extensions["intake"].redis, g.caller.app_password_id)
    except redis.RedisError:
        raise ApiError(
            503, "The billing queue is unavailable. Retry later.", headers={"Retry-After": REVOCATION_RETRY_AFTER_SECONDS}
        ) from None
    if revoked:
        raise revoked_unauthorized()


def superadmin_required(view):
    """Authenticate before the view runs; the caller is ``g.caller``."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.caller = authenticate()
        return view(*args, **kwargs)

    return wrapper
