"""A usage log row's life: its states, the moves allowed between them, and the one place
each move is written.

A row of ``user_billable_request_logs`` is born ``recorded`` (the recorder's insert) and
then moves only as ``TRANSITIONS`` allows::

    recorded --report-------------> reported
    recorded --fail---------------> failed     (Stripe can never take it as it is)
    recorded --flag---------------> failed     + needs_reconciliation (too old to resend blindly)
    reported --drop---------------> failed     (Stripe's error report: it dropped the event)
    failed   --redrive------------> recorded   (``usage retry``, its cause fixed)
    reported --redrive------------> recorded   (``usage retry --id --force``: Stripe lacks it)

Every move is one ``UPDATE`` that names the states it leaves from, so a row changed
meanwhile (a concurrent retry, an error report racing the reporter) is left alone, and
each sets its own timestamp and reason here, nowhere else. The recorder, the reporter,
the error-report handler and the operator commands all call these functions.

"Needs reconciliation" is a column, not a sentence: the reason text may be reworded
without changing what old rows mean.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import UUID

from shared import metrics, operator_messages
from shared.models import UsageStatus, UserBillableRequestLog

log = logging.getLogger(__name__)
_logs = UserBillableRequestLog

# The state of a row as the recorder inserts it.
INITIAL = UsageStatus.RECORDED
# Stripe deduplicates identifiers for 24 hours. A row still unreported near that age is
# not re-sent blindly (a lost answer could have been a success): it is flagged instead.
IDENTIFIER_WINDOW = dt.timedelta(hours=23)


@dataclass(frozen=True)
class Transition:
    name: str
    source: frozenset[UsageStatus]
    target: UsageStatus


REPORT = Transition("report", frozenset({UsageStatus.RECORDED}), UsageStatus.REPORTED)
FAIL = Transition("fail", frozenset({UsageStatus.RECORDED}), UsageStatus.FAILED)
FLAG = Transition("flag for reconciliation", frozenset({UsageStatus.RECORDED}), UsageStatus.FAILED)
DROP = Transition("dropped by Stripe", frozenset({UsageStatus.REPORTED}), UsageStatus.FAILED)
REDRIVE = Transition("redrive", frozenset({UsageStatus.FAILED}), UsageStatus.RECORDED)
REDRIVE_REPORTED = Transition("redrive a reported row", frozenset({UsageStatus.REPORTED}), UsageStatus.RECORDED)
TRANSITIONS = (REPORT, FAIL, FLAG, DROP, REDRIVE, REDRIVE_REPORTED)


def _move(transition: Transition, *where, **values):
    """The one ``UPDATE`` shape of every move: from the transition's states only."""
    return (
        sa.update(_logs)
        .where(_logs.status.in_(transition.source), *where)
        .values(status=transition.target, **values)
    )


def mark_reported(session: orm.Session, row_ids: list[uuid.UUID]) -> None:
    """Stripe took these rows' meter events (now, or on an earlier attempt)."""
    if not row_ids:
        return
    session.execute(
        _move(REPORT, _logs.id.in_(row_ids)).values(
            stripe_reported_at=sa.func.now(), stripe_attempts=_logs.stripe_attempts + 1, error=None
        )
    )
    metrics.events_reported.inc(len(row_ids))
    log.info("usage events reported to Stripe", extra={"event_ids": [str(i) for i in row_ids]})


def note_attempt(session: orm.Session, row_ids: list[uuid.UUID], refusal: str) -> None:
    """Stripe refused for now: the rows stay recorded, with the attempt and its reason."""
    if row_ids:
        session.execute(
            sa.update(_logs)
            .where(_logs.id.in_(row_ids), _logs.status == UsageStatus.RECORDED)
            .values(stripe_attempts=_logs.stripe_attempts + 1, error="Last attempt: " + refusal)
        )


def fail(session: orm.Session, reasons: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    """Recorded rows Stripe can never take as they are, each with its reason. The ids
    that moved."""
    return _fail(session, FAIL, reasons)


def fail_dropped(session: orm.Session, reasons: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    """Reported rows Stripe dropped after accepting them, each with Stripe's reason (rows
    no longer reported are left alone). The ids that moved."""
    return _fail(session, DROP, reasons)


def _fail(session: orm.Session, transition: Transition, reasons: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    if not reasons:
        return []
    given = sa.values(sa.column("id", UUID(as_uuid=True)), sa.column("reason", sa.Text), name="given").data(
        list(reasons.items())
    )
    moved = list(
        session.scalars(
            _move(transition, _logs.id == given.c.id).values(error=given.c.reason).returning(_logs.id)
        )
    )
    metrics.events_failed.inc(len(moved))
    for row_id in moved:
        log.warning("usage event failed", extra={"event_id": str(row_id), "reason": reasons[row_id]})
    return moved


def flag_for_reconciliation(session: orm.Session) -> int:
    """Rows recorded but unreported for longer than Stripe remembers identifiers: failed,
    flagged, so no retry resends them before ``stripe reconcile``. How many."""
    return session.execute(
        _move(FLAG, _logs.recorded_at < sa.func.now() - IDENTIFIER_WINDOW).values(
            needs_reconciliation=True, error=operator_messages.RECONCILE_FIRST
        )
    ).rowcount


def redrive(session: orm.Session, failed: Iterable[uuid.UUID], reported: Iterable[uuid.UUID] = ()) -> list:
    """Failed rows (and reported rows Stripe lacks) back to recorded, for the reporter to
    send again under the same identifier; rows changed meanwhile are left alone.

    ``recorded_at`` restarts the clock the sweep judges by, so the new attempt gets its own
    24-hour window instead of being flagged again at once. The rows moved: (id, organization_id).
    """
    values = dict(error=None, needs_reconciliation=False, recorded_at=sa.func.now(), stripe_reported_at=None)
    moved = []
    for transition, row_ids in ((REDRIVE, list(failed)), (REDRIVE_REPORTED, list(reported))):
        if row_ids:
            moved += session.execute(
                _move(transition, _logs.id.in_(row_ids)).values(**values).returning(_logs.id, _logs.organization_id)
            ).all()
    return moved
