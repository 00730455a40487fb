"""Stripe's side of the voids (``shared.usage_voids``), done by the shard's reporter.

A void's call is made while the reporter holds its organization's shard lock, before the
round's rows are read: no meter event of the organization is in flight meanwhile, so a
cancel never overtakes the send it cancels, and the row (which ``sending()`` no longer
lets go) is never sent after it.

Each void is planned in one transaction and settled in another, with the call between:

1. Before its first call the method is chosen again from the row as it is now (a cancel
   asked 22 h 59 min after the first send may have to be a negative event by the time it
   goes). Once a call went out the method stays, so nothing is taken back twice. The
   first call's time is written before it is made.
2. ``stripe_cancel``: one v2 meter event adjustment under one key per row (v2 replays
   successes, re-runs failures). ``already_canceled`` is a success. Stripe holding no such
   event (``resource_missing``) means nothing is billed, but only once Stripe had time to
   process the row's own send: from ``STRIPE_SUMMARY_SETTLE_SECONDS`` after the later of
   the void and the row's report; before that the void waits, and is tried again.
3. ``stripe_negative_event``: one v1 meter event of the negated value, identifier
   ``void-<row id>``, a key fresh per attempt (v1 stores a key's first answer, a 500
   included); a resend is deduplicated by the identifier, and one whose first send is
   older than Stripe's identifier window fails for an operator rather than risk a second.
4. Transient refusals (429, 5xx, no answer) leave the void pending with the reason, and
   the shard backs off as for meter events; a final refusal fails it with Stripe's reason.

A worker killed anywhere leaves the void pending: the next round sends the same call
again, which Stripe answers as the first (or as already done).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import orm

from shared import models, usage_rows, usage_voids
from shared.models import UsageVoid, VoidMethod, VoidState
from shared.usage_voids import VoidRefused
from worker.stripe_reporting import Outcome, Result, StripeMeter

log = logging.getLogger(__name__)
_logs = models.UserBillableRequestLog
# How far Stripe's receipt may lag the row's first send and still be cancelled: Stripe
# cancels within 24 h of receipt, which is no earlier than the first send.
CANCEL_WINDOW = dt.timedelta(hours=24)


@dataclass
class VoidRound:
    """What one round did for the shard's voids."""

    completed: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    refused: str | None = None  # Stripe's reason, when it refused for now


def void_round(transaction, meter: StripeMeter, in_shard) -> VoidRound:
    """Do Stripe's side of the shard's pending voids (``in_shard``: a condition on the log
    row); stops at the first transient refusal."""
    result = VoidRound()
    with transaction() as session:
        void_ids = list(session.scalars(usage_voids.due_of(in_shard).limit(usage_voids.VOIDS_PER_ROUND)))
    for void_id in void_ids:
        with transaction() as session:
            call = _plan(session, meter, void_id, result)
        if call is None:
            continue
        answer = call()
        with transaction() as session:
            _settle(session, meter, void_id, answer, result)
        if result.refused:
            break
    return result


def _plan(session: orm.Session, meter: StripeMeter, void_id: uuid.UUID, result: VoidRound) -> Callable[[], Result] | None:
    """The void's next call, its send marked; None when nothing is to be sent now."""
    void = session.get(UsageVoid, void_id, with_for_update=True)
    if void is None or void.state != VoidState.PENDING:
        return None
    row = session.get(_logs, void.row_id)
    now = session.scalar(sa.select(sa.func.now()))
    if void.stripe_first_sent_at is None and void.settled_by is None:
        try:
            void.method = usage_voids.method_for(row, now)
        except VoidRefused as refused:
            _fail(void, str(refused), result)
            return None
        if void.method == VoidMethod.NEVER_SENT:
            usage_voids.complete(session, void)
            result.completed.append(void_id)
            return None
        if void.method == VoidMethod.MANUAL_CREDIT:
            log.warning("usage void needs a manual credit", extra={"event_id": str(void_id)})
            return None
    elif (void.method == VoidMethod.STRIPE_NEGATIVE_EVENT and void.stripe_first_sent_at is not None
          and void.stripe_first_sent_at < now - usage_rows.IDENTIFIER_WINDOW):
        _fail(void, "Its negative event was first sent longer ago than Stripe deduplicates identifiers and is not "
                    f"confirmed: run `stripe reconcile` for its organization, then `{usage_voids.SETTLE_COMMAND}`.", result)
        return None
    customer = None
    if void.method == VoidMethod.STRIPE_NEGATIVE_EVENT:
        customer = session.scalar(
            sa.select(models.Organization.stripe_customer_id).where(models.Organization.id == row.organization_id)
        )
        if not customer:
            _fail(void, "Its organization has no Stripe customer now, so no negative event can be sent.", result)
            return None
    void.stripe_first_sent_at = void.stripe_first_sent_at or now
    void.stripe_attempts, void.retry_at, row_id = void.stripe_attempts + 1, None, row.id
    if void.method == VoidMethod.STRIPE_CANCEL:
        void.stripe_identifier = row.stripe_identifier
        void.stripe_request_key = usage_voids.CANCEL_KEY.format(row_id=row_id)
        event_name, identifier, key = row.stripe_event_name or meter.event_name, row.stripe_identifier, void.stripe_request_key
        return lambda: meter.cancel(row_id, event_name, identifier, key)
    event = usage_voids.negative_event(row, customer, void.stripe_attempts - 1)
    void.stripe_identifier = usage_voids.NEGATIVE_IDENTIFIER.format(row_id=row_id)
    void.stripe_request_key = usage_voids.NEGATIVE_KEY.format(row_id=row_id, attempt=void.stripe_attempts)
    identifier, key = void.stripe_identifier, void.stripe_request_key
    return lambda: meter.send_one(event, identifier, key)


def _settle(session: orm.Session, meter: StripeMeter, void_id: uuid.UUID, answer: Result, result: VoidRound) -> None:
    void = session.get(UsageVoid, void_id, with_for_update=True)
    if void is None or void.state != VoidState.PENDING:
        return
    if answer.outcome is Outcome.REPORTED:
        usage_voids.complete(session, void)
        result.completed.append(void_id)
    elif answer.outcome is Outcome.MISSING:
        _missing(session, meter, void, answer.error, result)
    elif answer.outcome is Outcome.RETRY:
        void.error = "Last attempt: " + answer.error
        result.refused = answer.error
    else:
        _fail(void, answer.error, result)


def _missing(session: orm.Session, meter: StripeMeter, void: UsageVoid, why: str, result: VoidRound) -> None:
    """Stripe holds no event to cancel: nothing is billed, once Stripe had time to process
    the row's own send; it could no longer cancel one received 24 h ago."""
    row = session.get(_logs, void.row_id)
    now = session.scalar(sa.select(sa.func.now()))
    if row.stripe_first_sent_at is not None and row.stripe_first_sent_at < now - CANCEL_WINDOW:
        _fail(void, f"{why}; Stripe no longer cancels an event received 24 h ago, and may hold this one: run "
                    f"`stripe reconcile` for its organization, then `{usage_voids.SETTLE_COMMAND}`.", result)
        return
    settled_at = max(filter(None, (void.requested_at, row.stripe_reported_at))) + meter.summary_settle
    if now >= settled_at:
        usage_voids.complete(session, void)
        result.completed.append(void.row_id)
        return
    void.retry_at = settled_at
    void.error = f"Last attempt: {why}; asked again after {settled_at.isoformat(timespec='seconds')}, when Stripe has processed its send."


def _fail(void: UsageVoid, reason: str, result: VoidRound) -> None:
    usage_voids.fail(void, reason)
    result.failed[void.row_id] = reason
