"""A void's life: taking back a usage event that should never have been billed.

A void is asked for once per log row (the API, ``usage void``) and is never deleted or
undone. Its ``method`` says how Stripe's side is done, chosen from the row as it is then
(``method_for``):

- ``never_sent``: Stripe bills nothing of the row (never sent; or failed, so Stripe
  refused or dropped it). Complete at once.
- ``stripe_cancel``: the row was first sent less than ``IDENTIFIER_WINDOW`` (23 h) ago, so
  Stripe received it less than 24 h ago and still cancels it (a meter event adjustment).
- ``stripe_negative_event``: later, while the row's ``occurred_at`` is inside Stripe's
  35-day window: a meter event of the negated value with the identifier ``void-<row id>``
  and the row's own ``occurred_at`` as its timestamp, so it lands in the same minute and
  billing period as the event it takes back.
- ``manual_credit``: Stripe can no longer be changed for it; finance issues a credit note
  and says so (``usage credit-issued``), which completes it.

``state`` is ``pending`` until Stripe's side is done (the shard's reporter does it, under
the shard's lock, so it never races a report of the same organization: ``worker.voiding``),
then ``completed``, when the row becomes ``voided`` (``shared.usage_rows.void``); or
``failed`` with ``error`` when Stripe refused it for good or an operator must look. Asking
again re-arms a failed void; a completed one is answered as it is: never twice.

A row that may be at Stripe without Stripe still deduplicating it (flagged for
reconciliation, or first sent more than 23 h ago and not reported) is refused a void
(``VoidRefused``): an operator runs ``stripe reconcile`` and says what Stripe bills of it
(``settled``). So does a void that failed for want of that.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import sqlalchemy as sa
from sqlalchemy import orm

from shared import stripe_meter, usage_rows
from shared.models import UsageStatus, UsageVoid, UserBillableRequestLog, VoidMethod, VoidState
from shared.stripe_meter import MeterEvent

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 500
# What a void sends to Stripe: the negative event's identifier, and the calls' keys.
NEGATIVE_IDENTIFIER = "void-{row_id}"
CANCEL_KEY = "agent700-void-cancel-{row_id}"
NEGATIVE_KEY = "agent700-void-{row_id}-{attempt}"
# The methods whose work is a Stripe call.
STRIPE_METHODS = frozenset({VoidMethod.STRIPE_CANCEL, VoidMethod.STRIPE_NEGATIVE_EVENT})


# What an operator runs once ``stripe reconcile`` showed what Stripe bills of a row.
SETTLE_COMMAND = "usage void-settled --id ID --stripe-bills nothing|the-event --note TEXT"


class VoidRefused(Exception):
    """The row cannot be voided now, for the reason given."""


def method_for(row: UserBillableRequestLog, now: dt.datetime) -> VoidMethod:
    """How the row is taken back at Stripe now; ``VoidRefused`` if it cannot be yet."""
    if row.status == UsageStatus.FAILED and not row.needs_reconciliation:
        return VoidMethod.NEVER_SENT
    first_sent = row.stripe_first_sent_at or row.stripe_reported_at
    if first_sent is None:
        if row.status != UsageStatus.REPORTED:
            return VoidMethod.NEVER_SENT
        # Reported before first sends were kept: when Stripe received it is not known, so
        # it is taken back as one received long ago (a cancel might come too late).
        first_sent = dt.datetime.min.replace(tzinfo=dt.UTC)
    first_sent_long_ago = first_sent < now - usage_rows.IDENTIFIER_WINDOW
    if row.needs_reconciliation or (row.status == UsageStatus.RECORDED and first_sent_long_ago):
        raise VoidRefused(
            "Stripe may hold this event and no longer deduplicates it: run `stripe reconcile` for its "
            f"organization, then settle the void with `{SETTLE_COMMAND}`."
        )
    if not first_sent_long_ago:
        return VoidMethod.STRIPE_CANCEL
    if stripe_meter.unsendable(negative_event(row, ""), now) is None:
        return VoidMethod.STRIPE_NEGATIVE_EVENT
    return VoidMethod.MANUAL_CREDIT


def billed_at_stripe():
    """The log rows Stripe should count (a condition): the reported ones, and the voided
    ones it could no longer be changed for (``manual_credit``: finance credits them).
    A cancelled row is gone from Stripe's summaries, and a negative event nets its row
    out in the same minute, so the other voided rows count nothing there."""
    manual_credit = (
        sa.exists()
        .where(UsageVoid.row_id == UserBillableRequestLog.id, UsageVoid.method == VoidMethod.MANUAL_CREDIT)
        .correlate_except(UsageVoid)
    )
    return sa.or_(
        UserBillableRequestLog.status == UsageStatus.REPORTED,
        sa.and_(UserBillableRequestLog.status == UsageStatus.VOIDED, manual_credit),
    )


def negative_event(row: UserBillableRequestLog, stripe_customer_id: str, attempts: int = 0) -> MeterEvent:
    """The meter event that takes the row back: its value negated, at its own time."""
    return MeterEvent(row.id, stripe_customer_id, -row.stripe_value, row.occurred_at, attempts)


def request(session: orm.Session, row_id: uuid.UUID, reason: str, requested_by: str) -> UsageVoid | None:
    """Void the row (locked for it): the void as it is now, None if there is no such row.

    An earlier void is answered as it is (a failed one is armed again); a new one is
    complete at once when Stripe holds nothing of the row. ``VoidRefused`` when the row
    cannot be voided yet.
    """
    row = session.get(UserBillableRequestLog, row_id, with_for_update=True)
    if row is None:
        return None
    void = session.get(UsageVoid, row_id, with_for_update=True)
    if void is not None:
        if void.state == VoidState.FAILED:
            void.state, void.error = VoidState.PENDING, None
            session.flush()
            log.info("usage void armed again", extra={"event_id": str(row_id)})
        return void
    now = session.scalar(sa.select(sa.func.now()))
    method = method_for(row, now)
    void = UsageVoid(row_id=row_id, reason=reason, requested_by=requested_by, method=method, state=VoidState.PENDING)
    session.add(void)
    session.flush()
    if method is VoidMethod.NEVER_SENT:
        complete(session, void)
    log.info("usage void asked for", extra={"event_id": str(row_id), "method": str(method), "requested_by": requested_by})
    return void


def complete(session: orm.Session, void: UsageVoid, credit_note: str | None = None) -> None:
    """Nothing of the row remains billed: the void is complete and the row voided."""
    now = session.scalar(sa.select(sa.func.now()))
    void.state, void.error, void.completed_at = VoidState.COMPLETED, None, now
    if credit_note is not None:
        void.credit_note = credit_note
    session.flush()
    usage_rows.void(session, void.row_id)
    log.info("usage void completed", extra={"event_id": str(void.row_id), "method": void.method})


def fail(void: UsageVoid, reason: str) -> None:
    void.state, void.error = VoidState.FAILED, reason
    log.warning("usage void failed", extra={"event_id": str(void.row_id), "method": void.method, "reason": reason})


def dropped(session: orm.Session, reasons: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    """Stripe dropped these voids' negative events after taking them (its error report):
    each void fails with Stripe's reason, its send forgotten (Stripe keeps nothing of a
    dropped event, so asking again sends it afresh), and its row is billed again. The
    voids that failed."""
    failed = []
    for row_id, reason in reasons.items():
        void = session.get(UsageVoid, row_id, with_for_update=True)
        if void is None or void.method != VoidMethod.STRIPE_NEGATIVE_EVENT or void.state == VoidState.FAILED:
            continue
        void.state, void.completed_at, void.stripe_first_sent_at = VoidState.FAILED, None, None
        void.error = reason
        session.flush()
        usage_rows.void_dropped(session, row_id)
        log.warning("usage void dropped by Stripe", extra={"event_id": str(row_id), "reason": reason})
        failed.append(row_id)
    return failed


def credit_issued(session: orm.Session, row_id: uuid.UUID, credit_note: str) -> UsageVoid:
    """Finance credited a ``manual_credit`` void (``credit_note`` says how): complete."""
    void = session.get(UsageVoid, row_id, with_for_update=True)
    if void is None or void.method != VoidMethod.MANUAL_CREDIT:
        raise VoidRefused("This event has no void waiting for a manual credit.")
    if void.state != VoidState.COMPLETED:
        complete(session, void, credit_note)
    return void


def settled(
    session: orm.Session, row_id: uuid.UUID, stripe_bills: bool, note: str, settled_by: str, reason: str | None = None,
) -> UsageVoid:
    """An operator settled with ``stripe reconcile`` what Stripe bills of the row, whose void
    Stripe's answers could not decide (refused, or failed asking for reconciliation).

    ``stripe_bills`` false: nothing of it is billed, and the void is complete. True: it is
    still billed, so a negative event takes it back (sent afresh: Stripe counted none of
    an earlier one), or a manual credit past Stripe's window. The operator's method
    stands: it is not chosen again from the row. A void not asked for yet is asked for
    here (``reason``).
    """
    row = session.get(UserBillableRequestLog, row_id, with_for_update=True)
    if row is None:
        raise VoidRefused("No recorded event with this id.")
    void = session.get(UsageVoid, row_id, with_for_update=True)
    if void is None:
        if not reason:
            raise VoidRefused("This event has no void yet: give the reason for voiding it.")
        void = UsageVoid(row_id=row_id, reason=reason, requested_by=settled_by, method=VoidMethod.NEVER_SENT)
        session.add(void)
    elif void.state != VoidState.FAILED:
        raise VoidRefused(f"This event's void is {void.state}: only a failed void, or one not asked for yet, is settled.")
    now = session.scalar(sa.select(sa.func.now()))
    void.state, void.error, void.retry_at, void.settled_by, void.settled_note = (
        VoidState.PENDING, None, None, settled_by, note,
    )
    if stripe_bills:
        sendable = stripe_meter.unsendable(negative_event(row, ""), now) is None
        void.method = VoidMethod.STRIPE_NEGATIVE_EVENT if sendable else VoidMethod.MANUAL_CREDIT
        void.stripe_first_sent_at = None
    session.flush()
    if not stripe_bills:
        complete(session, void)
    log.info("usage void settled", extra={"event_id": str(row_id), "method": str(void.method), "settled_by": settled_by})
    return void


# The voids one report round takes on.
VOIDS_PER_ROUND = 100


def due():
    """Pending voids whose Stripe call is due now (a condition on ``UsageVoid``)."""
    return sa.and_(
        UsageVoid.state == VoidState.PENDING,
        UsageVoid.method.in_([str(m) for m in STRIPE_METHODS]),
        sa.or_(UsageVoid.retry_at.is_(None), UsageVoid.retry_at <= sa.func.now()),
    )


def due_of(*where) -> sa.Select:
    """The due voids of the log rows ``where`` names, oldest first."""
    return (
        sa.select(UsageVoid.row_id)
        .join(UserBillableRequestLog, UserBillableRequestLog.id == UsageVoid.row_id)
        .where(due(), *where)
        .order_by(UsageVoid.requested_at)
    )


def as_record(void: UsageVoid | None) -> dict | None:
    """The status record's ``void`` object."""
    if void is None:
        return None
    return {
        "reason": void.reason, "requested_at": void.requested_at, "requested_by": void.requested_by,
        "method": void.method, "completed_at": void.completed_at,
    }
