"""App Password revocation marks: one Redis key per revoked App Password.

Web processes cache verified callers (``ingest_api.auth``), so the database's
``revoked_at`` alone would let a revoked App Password in until the cache expires. The
operator's ``app-passwords revoke`` sets a mark here as well, and every request checks it:
the intake's accept script atomically with the append (``shared.intake``), the other
endpoints with ``is_revoked``. The functions take the caller's Redis client and let its
``redis.RedisError`` through: each caller answers for an unreachable Redis its own way.
"""

from __future__ import annotations

import uuid

import redis

# A mark outlives every web process's cached copy of the caller; after that the database
# (revoked_at) refuses it anyway.
REVOCATION_KEY = "billing:revoked-app-password:{app_password_id}"
REVOCATION_MARK_SECONDS = 24 * 3600


def revocation_key(app_password_id: uuid.UUID) -> str:
    return REVOCATION_KEY.format(app_password_id=app_password_id)


def mark_revoked(broker: redis.Redis, app_password_id: uuid.UUID) -> None:
    broker.set(revocation_key(app_password_id), 1, ex=REVOCATION_MARK_SECONDS)


def is_revoked(broker: redis.Redis, app_password_id: uuid.UUID) -> bool:
    return bool(broker.exists(revocation_key(app_password_id)))
