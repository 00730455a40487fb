"""A usage log row's life: its states, the moves allowed between them, and the one place
each move is written.

A row of ``user_billable_request_logs`` is born ``recorded`` (the recorder's insert) and
then moves only as ``TRANSITIONS`` allows::

    recorded --report-------------> reported
    recorded --fail---------------> failed     (Stripe can never take it as it is)
    recorded --flag---------------> failed     + needs_reconciliation (first sent too long ago)
    reported --drop---------------> failed     (Stripe's error report: it dropped the event)
    failed   --redrive------------> recorded   (``usage retry``, its cause fixed)
    reported --redrive------------> recorded   (``usage retry --id --force``: Stripe lacks it)
    recorded, reported, failed --void--> voided   (its void is complete: nothing of it billed)
    voided   --void dropped-------> reported   (Stripe's error report: it dropped the negative event)

Every move is one ``UPDATE`` that names the states it leaves from, so a row changed
meanwhile (a concurrent retry, an error report racing the reporter) is left alone, and
each sets its own timestamp and reason here, nowhere else. The recorder, the reporter,
the error-report handler and the operator commands all call these functions.

The hourly roll-ups of the rows (``usage_hourly``, read by ``shared.usage_totals``) follow
every insert and every move by themselves: migration 0008's statement-level triggers
subtract each moved row as it was and add it as it is, in the move's own transaction. A
new move needs nothing more here; a ``DELETE`` of rows (retention) leaves the roll-ups.

"Needs reconciliation" is a column, not a sentence: the reason text may be reworded
without changing what old rows mean. A row also needs it once its first send is older
than ``IDENTIFIER_WINDOW`` (``unreconciled()``): Stripe may have counted it, and no longer
recognizes its identifier, so a resend would be counted again. Such a row is sent again
only after ``stripe reconcile`` showed Stripe lacks it (``redrive(..., reconciled=...)``
then starts its window afresh).

A row with a void (``shared.usage_voids``) is never sent again: ``sending()`` leaves it
out, under the row's lock, so a void and a report that race are ordered by the database.
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
from shared.models import UsageStatus, UsageVoid, UserBillableRequestLog

log = logging.getLogger(__name__)
_logs = UserBillableRequestLog

# The state of a row as the recorder inserts it.
INITIAL = UsageStatus.RECORDED
# Stripe deduplicates identifiers for 24 hours from its first receipt. A row first sent
# longer ago than this is not sent again blindly (a lost answer, or a drop Stripe's
# lagging summaries suggested, could have been counted): it needs reconciliation first.
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
VOID = Transition(
    "void", frozenset({UsageStatus.RECORDED, UsageStatus.REPORTED, UsageStatus.FAILED}), UsageStatus.VOIDED
)
# Stripe dropped the negative event that voided the row: it bills the row again.
VOID_DROPPED = Transition("void dropped by Stripe", frozenset({UsageStatus.VOIDED}), UsageStatus.REPORTED)
TRANSITIONS = (REPORT, FAIL, FLAG, DROP, REDRIVE, REDRIVE_REPORTED, VOID, VOID_DROPPED)


def _move(transition: Transition, *where, **values):
    """The one ``UPDATE`` shape of every move: from the transition's states only."""
    return (
        sa.update(_logs)
        .where(_logs.status.in_(transition.source), *where)
        .values(status=transition.target, **values)
    )


@dataclass(frozen=True)
class StripeCall:
    """The call that carried a row: when it started, its Idempotency-Key, its event name."""

    started_at: dt.datetime
    request_key: str
    event_name: str


def unreconciled():
    """Rows Stripe may have counted and no longer deduplicates: flagged, or first sent
    longer ago than ``IDENTIFIER_WINDOW``. Sent again only after a reconciliation."""
    first_sent_long_ago = sa.and_(
        _logs.stripe_first_sent_at.is_not(None), _logs.stripe_first_sent_at < sa.func.now() - IDENTIFIER_WINDOW
    )  # never NULL, so that its negation holds for rows never sent
    return sa.or_(_logs.needs_reconciliation, first_sent_long_ago)


def without_void():
    """Rows no void was asked for: only those are sent to Stripe."""
    return ~sa.exists().where(UsageVoid.row_id == _logs.id)


def sending(session: orm.Session, row_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """A call is about to carry these rows: the first one starts their identifier window
    (written before the call, so a worker killed in it still leaves the mark). The rows
    that may go: still recorded, with no void (a void committed first wins the row's lock;
    one asked after this sees the send and cancels it)."""
    if not row_ids:
        return []
    return list(
        session.scalars(
            sa.update(_logs)
            .where(_logs.id.in_(row_ids), _logs.status == UsageStatus.RECORDED, without_void())
            .values(stripe_first_sent_at=sa.func.coalesce(_logs.stripe_first_sent_at, sa.func.now()))
            .returning(_logs.id)
        )
    )


def mark_reported(session: orm.Session, calls: dict[uuid.UUID, StripeCall]) -> None:
    """Stripe took these rows' meter events (now, or on an earlier attempt), each in its call."""
    if not calls:
        return
    given = sa.values(
        sa.column("id", UUID(as_uuid=True)), sa.column("started_at", sa.DateTime(timezone=True)),
        sa.column("request_key", sa.Text), sa.column("event_name", sa.Text), name="given",
    ).data([(row_id, c.started_at, c.request_key, c.event_name) for row_id, c in calls.items()])
    session.execute(
        _move(REPORT, _logs.id == given.c.id).values(
            stripe_reported_at=given.c.started_at, stripe_request_key=given.c.request_key,
            stripe_event_name=given.c.event_name, stripe_attempts=_logs.stripe_attempts + 1, error=None,
        )
    )
    metrics.events_reported.inc(len(calls))
    log.info("usage events reported to Stripe", extra={"event_ids": [str(i) for i in calls]})


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
    """Recorded rows first sent longer ago than Stripe remembers identifiers, still not
    reported: failed, flagged, so no retry resends them before ``stripe reconcile``. How many.
    (A row never sent is safe to send at any age: Stripe cannot have it.)"""
    return session.execute(
        _move(FLAG, _logs.stripe_first_sent_at < sa.func.now() - IDENTIFIER_WINDOW).values(
            needs_reconciliation=True, error=operator_messages.RECONCILE_FIRST
        )
    ).rowcount


def redrive(
    session: orm.Session, failed: Iterable[uuid.UUID], reported: Iterable[uuid.UUID] = (),
    reconciled: Iterable[uuid.UUID] = (),
) -> list:
    """Failed rows (and reported rows Stripe lacks) back to recorded, for the reporter to
    send again under the same identifier; rows changed meanwhile, and rows with a void
    (never sent again), are left alone.

    A row keeps the time of its first send: within Stripe's window the identifier still
    deduplicates the resend. Only the rows a reconciliation showed Stripe lacks
    (``reconciled``; every forced reported row is one) start a new window: Stripe has
    nothing of them to count twice. The rows moved: (id, organization_id).
    """
    reported = list(reported)
    fresh = list(set(reconciled) | set(reported))
    values = dict(
        error=None, needs_reconciliation=False, recorded_at=sa.func.now(), stripe_reported_at=None,
        stripe_first_sent_at=sa.case((_logs.id.in_(fresh), sa.null()), else_=_logs.stripe_first_sent_at),
    )
    moved = []
    for transition, row_ids in ((REDRIVE, list(failed)), (REDRIVE_REPORTED, reported)):
        if row_ids:
            moved += session.execute(
                _move(transition, _logs.id.in_(row_ids), without_void())
                .values(**values).returning(_logs.id, _logs.organization_id)
            ).all()
    return moved


def void(session: orm.Session, row_id: uuid.UUID) -> bool:
    """The row's void is complete: nothing of it is billed at Stripe. Whether it moved."""
    moved = session.execute(_move(VOID, _logs.id == row_id).values(error=None)).rowcount
    if moved:
        log.info("usage event voided", extra={"event_id": str(row_id)})
    return bool(moved)


def void_dropped(session: orm.Session, row_id: uuid.UUID) -> bool:
    """Stripe dropped the negative event of the row's void: the row is billed again."""
    return bool(session.execute(_move(VOID_DROPPED, _logs.id == row_id)).rowcount)
