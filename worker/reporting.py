"""Which recorded rows go to Stripe, by whom, and what their status becomes.

Stripe allows one concurrent meter call per customer per meter. Organizations are split
into ``REPORT_SHARDS`` shards (``shared.queue.shard_of``: the last byte of their id) and each shard has at most
one reporter at a time, held by a Redis lock: workers never fight over an organization,
and several shards report in parallel.

A reporter reports one round (up to ``ROWS_PER_ROUND`` rows) per task, so every task
names the events it reported; while rows wait it goes on in a new task. The shard's
pending flag (``shared.queue.REPORT_PENDING_KEY``) is set while a reporter is wanted or
running, so committing more rows sends no more tasks; the reporter clears it when it
stands down and then looks once more for rows, so none committed meanwhile is left.

A worker may die at any moment (``kill -9``), so neither the lock nor the flag outlives
its owner for long: both live seconds and are renewed by a heartbeat thread while the
reporter runs. A dead reporter's shard is free again within ``LOCK_SECONDS``; the beat
sweep (``worker.sweep``) wakes a shard whose rows still wait after that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import orm

from shared import models, operator_messages, pipeline_status, queue, stripe_meter, usage_rows, usage_voids
from shared.stripe_meter import MeterEvent
from worker import voiding
from worker.stripe_reporting import Outcome, Result, StripeMeter

log = logging.getLogger(__name__)
ROWS_PER_ROUND = 500
# The shard lock's time to live; its holder renews it (and the shard's pending flag)
# every LOCK_RENEW_SECONDS from a heartbeat thread, however long its Stripe calls take.
LOCK_SECONDS = 10
LOCK_RENEW_SECONDS = 3
# ...but only while its holder makes progress: a round (one read, its Stripe calls, one
# write) that has not finished after this long is taken for hung, and the lock is let go.
ROUND_MAX_SECONDS = 300
LOCK_KEY = "billing:report-lock:{shard}"
BACKOFF_KEY = "billing:report-backoff:{shard}"
# While a shard backs off, its pending flag outlives the backoff by this much: the
# reporter's own retry comes first; if it died with its worker, wake-ups resume then.
BACKOFF_PENDING_MARGIN_SECONDS = 2
REPORT_SHARDS, shard_of = queue.REPORT_SHARDS, queue.shard_of

_logs = models.UserBillableRequestLog
Transaction = Callable[[], contextlib.AbstractContextManager[orm.Session]]


def _in_shard(shard: int):
    # Same function as shard_of(), in SQL: the last byte of the UUID.
    return sa.func.get_byte(sa.func.uuid_send(_logs.organization_id), 15) % REPORT_SHARDS == shard


@dataclass
class Round:
    """What one report task did for its shard."""

    shard: int
    busy: bool = False  # another reporter holds the shard
    reported: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    refused: str | None = None  # Stripe's reason, when it refused for now
    retry_in: float | None = None  # seconds until the shard may report again
    more: bool = False  # rows still wait: another round follows in a new task
    voids: voiding.VoidRound = field(default_factory=voiding.VoidRound)


class _Lease:
    """The holder's side of a shard lock: ``round_started()`` at the round, ``lost`` once
    the lock could not be renewed (another reporter may hold the shard now)."""

    def __init__(self) -> None:
        self.lost = threading.Event()
        self._round_started = time.monotonic()

    def round_started(self) -> None:
        self._round_started = time.monotonic()

    def hung(self) -> bool:
        return time.monotonic() - self._round_started > ROUND_MAX_SECONDS


@contextlib.contextmanager
def _shard_lock(broker: redis.Redis, shard: int) -> Iterator[_Lease | None]:
    """Hold the shard's lock, renewed with its pending flag by a heartbeat thread; ``None``
    if another holds it."""
    # thread_local=False: the heartbeat thread renews with the token the caller acquired.
    lock = broker.lock(LOCK_KEY.format(shard=shard), timeout=LOCK_SECONDS, blocking=False, thread_local=False)
    if not lock.acquire():
        yield None
        return
    lease, stop = _Lease(), threading.Event()
    pending = queue.REPORT_PENDING_KEY.format(shard=shard)

    def heartbeat() -> None:
        while not stop.wait(LOCK_RENEW_SECONDS):
            if lease.hung():
                log.warning("report of shard %s stuck for %ss; letting its lock expire", shard, ROUND_MAX_SECONDS)
                lease.lost.set()
                return
            try:
                lock.reacquire()
                broker.pexpire(pending, queue.REPORT_PENDING_MS)
            except redis.exceptions.LockError:
                lease.lost.set()
                return
            except redis.RedisError as error:  # the broker is briefly unreachable: try again
                log.warning("could not renew the lock of shard %s: %s", shard, error)

    thread = threading.Thread(target=heartbeat, name=f"report-lock-{shard}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


def report_round(transaction: Transaction, broker: redis.Redis, meter: StripeMeter, shard: int) -> Round:
    """Report one round of the shard's recorded rows, if no other reporter holds it.

    ``transaction()`` gives a session in its own transaction: rows are read in one and
    their outcomes saved in another, so no transaction stays open over Stripe's calls.
    """
    with _shard_lock(broker, shard) as lease:
        if lease is None:
            # The holder looks for rows again when it stands down: nothing to do here.
            return Round(shard, busy=True)
        result = _report_locked(transaction, broker, meter, shard, lease)
    if result.retry_in is not None:
        # No wake-up until the backoff is over: the reporter's own retry comes then. Set
        # once the lock (and its heartbeat, which renews the flag) is let go.
        broker.set(
            queue.REPORT_PENDING_KEY.format(shard=shard), 1,
            px=int((result.retry_in + BACKOFF_PENDING_MARGIN_SECONDS) * 1000),
        )
    elif not result.more:
        result.more = _stand_down(transaction, broker, shard)
    return result


def _report_locked(transaction: Transaction, broker: redis.Redis, meter: StripeMeter, shard: int, lease: _Lease) -> Round:
    backoff_ms = broker.pttl(BACKOFF_KEY.format(shard=shard))
    if backoff_ms and backoff_ms > 0:
        return Round(shard, retry_in=backoff_ms / 1000)
    lease.round_started()
    voids = voiding.void_round(transaction, meter, _in_shard(shard))
    if voids.refused:
        return _back_off(broker, shard, Round(shard, voids=voids), voids.refused, attempt=1)
    with transaction() as session:
        rows = _unreported(session, shard)

    def sending(row_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        with transaction() as session:
            return usage_rows.sending(session, row_ids)

    outcomes = _outcomes(meter, rows, sending)
    if any(result.outcome is not Outcome.FAILED for result in outcomes.values()):
        pipeline_status.meter_checked(broker, meter.meter_problem(), time.time())
    if lease.lost.is_set():
        # Another reporter may hold the shard now; what Stripe took is still saved below
        # (identifiers make a second send of these rows harmless).
        log.warning("shard %s lost its lock during a round", shard)
    with transaction() as session:
        _save_outcomes(session, outcomes)
    result = Round(
        shard,
        reported=[i for i, r in outcomes.items() if r.outcome is Outcome.REPORTED],
        failed={i: r.error for i, r in outcomes.items() if r.outcome is Outcome.FAILED},
        more=len(rows) == ROWS_PER_ROUND,
        voids=voids,
    )
    refusals = [r for r in outcomes.values() if r.outcome is Outcome.RETRY]
    if refusals:
        return _back_off(broker, shard, result, refusals[0].error, max(row.stripe_attempts for row in rows) + 1)
    return result


def _back_off(broker: redis.Redis, shard: int, result: Round, refused: str, attempt: int) -> Round:
    """Stripe refused for now: the shard waits (longer each ``attempt``) before its next round."""
    # Full jitter, so that shards refused together do not come back together.
    backoff = get_exponential_backoff_interval(factor=1, retries=attempt, maximum=60, full_jitter=True)
    result.refused, result.retry_in, result.more = refused, max(0.5, backoff), False
    broker.set(BACKOFF_KEY.format(shard=shard), 1, px=int(result.retry_in * 1000))
    log.warning("stripe refused for now; shard %s backs off %.1fs: %s", shard, result.retry_in, result.refused)
    return result


def _stand_down(transaction: Transaction, broker: redis.Redis, shard: int) -> bool:
    """Clear the shard's pending flag; True if rows were committed meanwhile and this
    reporter takes them (it set the flag again) rather than a newly woken one."""
    pending = queue.REPORT_PENDING_KEY.format(shard=shard)
    broker.delete(pending)
    with transaction() as session:
        waiting = work_waiting(session, shard)
    return bool(waiting) and bool(broker.set(pending, 1, nx=True, px=queue.REPORT_PENDING_MS))


def work_waiting(session: orm.Session, shard: int) -> bool:
    """Whether the shard has rows to report or voids due (the stand-down's look)."""
    return bool(session.scalar(
        sa.select(sa.exists().where(_reportable(), _in_shard(shard)) | sa.exists(usage_voids.due_of(_in_shard(shard))))
    ))


def _reportable():
    # A row first sent longer ago than Stripe deduplicates waits for the sweep's flag; a
    # row with a void is taken back, not sent.
    return sa.and_(_logs.status == models.UsageStatus.RECORDED, ~usage_rows.unreconciled(), usage_rows.without_void())


def _unreported(session: orm.Session, shard: int):
    return session.execute(
        sa.select(
            _logs.id, _logs.organization_id, _logs.stripe_value, _logs.occurred_at, _logs.recorded_at,
            _logs.stripe_attempts, models.Organization.stripe_customer_id,
        )
        .join(models.Organization, models.Organization.id == _logs.organization_id)
        .where(_reportable(), _in_shard(shard))
        .order_by(_logs.recorded_at)
        .limit(ROWS_PER_ROUND)
    ).all()


def _outcomes(meter: StripeMeter, rows, sending: Callable[[list[uuid.UUID]], list[uuid.UUID]]) -> dict[uuid.UUID, Result]:
    """Send what Stripe can count (``sending`` is told first, and says which may still
    go); fail, with the reason, what it never could."""
    outcomes: dict[uuid.UUID, Result] = {}
    sendable = []
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        event = MeterEvent(row.id, row.stripe_customer_id, row.stripe_value, row.occurred_at, row.stripe_attempts)
        reason = (
            operator_messages.no_stripe_customer(row.organization_id) if not row.stripe_customer_id
            else stripe_meter.unsendable(event, now)
        )
        if reason:
            outcomes[row.id] = Result(Outcome.FAILED, reason)
        else:
            sendable.append(event)
    if sendable:
        if (problem := meter.meter_problem()) is not None:
            # Not sent into the void: the rows stay recorded until the meter is fixed.
            return outcomes | {event.row_id: Result(Outcome.RETRY, problem) for event in sendable}
        going = set(sending([event.row_id for event in sendable]))
        sendable = [event for event in sendable if event.row_id in going]
        if sendable:
            outcomes |= meter.report(sendable)
    return outcomes


def _save_outcomes(session: orm.Session, outcomes: dict[uuid.UUID, Result]) -> None:
    usage_rows.mark_reported(session, {i: r.call for i, r in outcomes.items() if r.outcome is Outcome.REPORTED})
    retrying = [i for i, r in outcomes.items() if r.outcome is Outcome.RETRY]
    if retrying:
        usage_rows.note_attempt(session, retrying, outcomes[retrying[0]].error)
    usage_rows.fail(session, {i: r.error for i, r in outcomes.items() if r.outcome is Outcome.FAILED})


def shard_is_handled(broker: redis.Redis, shard: int) -> bool:
    """A reporter holds the shard or is on its way (its lock or pending flag is set)."""
    return bool(broker.exists(LOCK_KEY.format(shard=shard), queue.REPORT_PENDING_KEY.format(shard=shard)))
