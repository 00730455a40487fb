"""Accepted events the pipeline could not bill, kept in ``rejected_usage_events`` with a
readable reason until an operator re-drives them (``usage retry``) or they are recorded.

Whatever an event holds is kept: NUL and lone surrogates, which PostgreSQL's text and
jsonb cannot hold, are written out as the text ``\\uXXXX``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import insert

from shared import intake, models
from shared.usage_event import AcceptedUsageEvent

_rejected = models.RejectedUsageEvent.__table__
# NUL and lone surrogates: what PostgreSQL's text and jsonb cannot hold.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Rejection:
    payload: dict[str, Any]
    reason: str

    @classmethod
    def of_event(cls, event: AcceptedUsageEvent, reason: str) -> Rejection:
        return cls(storable(event.model_dump(mode="json")), storable(reason))

    @classmethod
    def of_entry(cls, entry: intake.Entry, reason: str) -> Rejection:
        """An intake entry whose message is not an accepted event."""
        return cls(storable({"stream_entry": entry.entry_id, "message": entry.message}), storable(reason))


def entry_key(entry: intake.Entry) -> uuid.UUID:
    """The id an unreadable intake entry is kept under (derived from its stream entry)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{intake.STREAM}/{entry.entry_id}")


def save(session: orm.Session, rejections: dict[uuid.UUID, Rejection], *, resolved: set[uuid.UUID]) -> None:
    """Resolve earlier rejections of events now recorded (a re-drive); upsert the new ones."""
    if resolved:
        session.execute(sa.update(_rejected).where(_rejected.c.id.in_(resolved)).values(resolved_at=sa.func.now()))
    if not rejections:
        return
    statement = insert(_rejected).values(
        [{"id": key, "payload": rejection.payload, "reason": rejection.reason} for key, rejection in rejections.items()]
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[_rejected.c.id],
            set_={
                "payload": statement.excluded.payload,
                "reason": statement.excluded.reason,
                "attempts": _rejected.c.attempts + 1,
                "rejected_at": sa.func.now(),
                "resolved_at": None,
            },
        )
    )


def storable(value: Any) -> Any:
    """A JSON value PostgreSQL stores: NUL and lone surrogates in its strings written out
    as the text ``\\uXXXX``, so a refused event is kept, readable, with its reason."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value
