"""Idempotency-Keys kept for ever: the log rows that already hold a caller's keys.

Redis holds a key's claim for its first 24 hours (``shared.intake``); from its recording
on, the event's log row is the key's memory too, for as long as the row exists. The edge
asks here before it accepts a keyed event, so that a replay after any time is answered
as the event it was: 200 with the original id for the same body, 409 for another.

Unkeyed events never come here: their path has no PostgreSQL round trip.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa

from shared import db, models

log = logging.getLogger(__name__)
_logs = models.UserBillableRequestLog.__table__


@dataclass(frozen=True)
class KeptKey:
    """The event first accepted under a key, as its log row has it."""

    event_id: uuid.UUID
    status: str
    # None for rows recorded before fingerprints were kept: such a replay is taken for the
    # same body (answered 200, never billed twice) since it cannot be told apart.
    fingerprint: str | None

    def same_body(self, fingerprint: str) -> bool:
        return self.fingerprint is None or self.fingerprint == fingerprint


def kept_keys(database_url: str, caller_user_id: uuid.UUID, keys: Collection[str]) -> dict[str, KeptKey]:
    """The caller's keys among ``keys`` that a log row holds, by key.

    Empty when PostgreSQL does not answer: the intake keeps accepting through a database
    outage, and then Redis's claims decide alone, as they do within 24 hours. A replay
    older than that, accepted during the outage, is still never billed twice: the log
    table's unique index keeps it out, and the recorder sets it aside as a duplicate.
    """
    if not keys:
        return {}
    query = sa.select(_logs.c.idempotency_key, _logs.c.id, _logs.c.status, _logs.c.idempotency_fingerprint).where(
        _logs.c.caller_user_id == caller_user_id, _logs.c.idempotency_key.in_(list(keys))
    )
    try:
        with db.engine_for(database_url).connect() as connection:
            rows = connection.execute(query).all()
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as error:
        log.warning(
            "PostgreSQL did not answer the Idempotency-Key lookup; Redis's claims decide alone",
            extra={"error": str(error).splitlines()[0]},
        )
        return {}
    return {key: KeptKey(event_id, status, fingerprint) for key, event_id, status, fingerprint in rows}
