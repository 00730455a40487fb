"""An operator's set-aside (``intake set-aside``): an intake entry that must not wait any
longer is kept as a rejected event with the operator's reason, to be re-driven with
``usage retry`` once its cause is fixed."""

from __future__ import annotations

import uuid

import pydantic
import redis
from sqlalchemy import orm

from shared import intake
from shared.usage_event import AcceptedUsageEvent
from worker import rejected_events
from worker.rejected_events import Rejection


def set_aside_entry(session: orm.Session, broker: redis.Redis, entry_id: str, reason: str) -> uuid.UUID:
    """Keep an intake entry as a rejected event with the operator's reason (in the
    session's transaction); the caller removes the entry from the stream after the commit.
    Its id: the event's, or one derived from the entry if its message is unreadable."""
    entry = intake.entry(broker, entry_id)
    if entry is None:
        raise LookupError(f"No intake entry {entry_id}.")
    reason = f"Set aside by an operator: {reason}"
    try:
        event = AcceptedUsageEvent.from_message(entry.message or "")
        key, rejection = event.id, Rejection.of_event(event, reason)
    except pydantic.ValidationError:
        key, rejection = rejected_events.entry_key(entry), Rejection.of_entry(entry, reason)
    rejected_events.save(session, {key: rejection}, resolved=set())
    return key
