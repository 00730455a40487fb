"""Which recorded rows go to Stripe, by whom, and what their status becomes.

Stripe allows one concurrent meter call per customer per meter. Organizations are split
into ``REPORT_SHARDS`` shards (by the last byte of their id) and each shard has at most
one reporter at a time, held by a Redis lock: workers never fight over an organization,
and several shards report in parallel.

Wake-ups are coalesced: recording a batch sets a shard's "pending" flag and sends one
``report_shard`` task only if the flag was not already set; the reporter clears the flag
before it reads, so rows committed after that read always cause another run.

A worker may die at any moment (``kill -9``), so neither the lock nor the flag may outlive
their owner for long: the lock lives ``LOCK_SECONDS`` and is renewed by a heartbeat thread
while its reporter runs; the flag lives ``PENDING_SECONDS``. A dead reporter's shard is
free again within seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa

from shared import db, metrics, models
from shared.config import Settings
# Defined in shared/ (the operator commands need them too); still importable from here.
from shared.reconciliation import RECONCILE_ERROR as RECONCILE_ERROR
from shared.sharding import REPORT_SHARDS as REPORT_SHARDS, shard_of as shard_of
from worker.stripe_reporting import MeterEvent, Outcome, Result, StripeMeter, backoff_seconds

log = logging.getLogger(__name__)
ROWS_PER_ROUND = 500
# The shard lock's time to live. Its holder renews it every LOCK_RENEW_SECONDS from a
# heartbeat thread, however long its Stripe calls take; a holder that died (its heartbeat
# with it) frees the shard within LOCK_SECONDS. It used to be a fixed 300 s, renewed only
# between rounds: a worker killed mid-report stalled its shard for five minutes.
LOCK_SECONDS = 30
LOCK_RENEW_SECONDS = 10
# ...but only while its holder makes progress: a round (one read, its Stripe calls, one
# write) that has not finished after this long is taken for hung, and the lock is let go.
ROUND_MAX_SECONDS = 300
# A wake-up flag whose task died with a killed worker (Redis redelivers that message only
# after the visibility timeout) would block every later wake-up of the shard: it expires.
# A flag expiring early only costs a redundant report task, which finds nothing to do.
PENDING_SECONDS = 30
PENDING_KEY = "billing:report-pending:{shard}"
LOCK_KEY = "billing:report-lock:{shard}"
BACKOFF_KEY = "billing:report-backoff:{shard}"
# Stripe deduplicates identifiers for 24 hours. A row still unreported near that age is
# not re-sent blindly (a lost answer could have been a success): it is flagged instead.
IDENTIFIER_WINDOW = dt.timedelta(hours=23)

_logs = models.UserBillableRequestLog


def _in_shard(shard: int):
    # Same function as shard_of(), in SQL: the last byte of the UUID.
    return sa.func.get_byte(sa.func.uuid_send(_logs.organization_id), 15) % REPORT_SHARDS == shard


@dataclass
class ShardReport:
    busy: bool = False
    reported: list[uuid.UUID] = field(default_factory=list)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    retry_in: float | None = None  # seconds, when Stripe refused for now


def claim_wakeup(broker: redis.Redis, shard: int) -> bool:
    """True if the caller should send a report task for the shard (none is pending)."""
    return bool(broker.set(PENDING_KEY.format(shard=shard), 1, nx=True, ex=PENDING_SECONDS))


class _Lease:
    """The holder's side of a shard lock: ``round_started()`` at each round, ``lost`` once
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
    """Hold the shard's lock, renewed by a heartbeat thread; ``None`` if another holds it."""
    # thread_local=False: the heartbeat thread renews with the token the caller acquired.
    lock = broker.lock(LOCK_KEY.format(shard=shard), timeout=LOCK_SECONDS, blocking=False, thread_local=False)
    if not lock.acquire():
        yield None
        return
    lease, stop = _Lease(), threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_RENEW_SECONDS):
            if lease.hung():
                log.warning("report of shard %s stuck for %ss; letting its lock expire", shard, ROUND_MAX_SECONDS)
                lease.lost.set()
                return
            try:
                lock.reacquire()
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
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass


def report_shard(settings: Settings, broker: redis.Redis, meter: StripeMeter, shard: int) -> ShardReport:
    with _shard_lock(broker, shard) as lease:
        if lease is None:
            return ShardReport(busy=True)
        return _report_locked(settings, broker, meter, shard, lease)


def _report_locked(settings: Settings, broker: redis.Redis, meter: StripeMeter, shard: int, lease: _Lease) -> ShardReport:
    backoff_ttl = broker.pttl(BACKOFF_KEY.format(shard=shard))
    if backoff_ttl and backoff_ttl > 0:
        return ShardReport(retry_in=backoff_ttl / 1000)
    broker.delete(PENDING_KEY.format(shard=shard))
    report = ShardReport()
    while True:
        if lease.lost.is_set():
            # Another reporter may hold the shard now: leave the rest to it (or to a retry).
            report.busy = True
            return report
        lease.round_started()
        rows = _unreported(settings, shard)
        if not rows:
            return report
        outcomes = _report_rows(settings, meter, rows)
        report.reported += [i for i, r in outcomes.items() if r.outcome is Outcome.REPORTED]
        report.failed |= {i: r.error for i, r in outcomes.items() if r.outcome is Outcome.FAILED}
        retry = [r for r in outcomes.values() if r.outcome is Outcome.RETRY]
        if retry:
            attempt = max(row.stripe_attempts for row in rows) + 1
            report.retry_in = max(0.5, backoff_seconds(attempt))
            broker.set(BACKOFF_KEY.format(shard=shard), 1, px=int(report.retry_in * 1000))
            # The caller re-runs this shard after the backoff; until then no other wake-up.
            broker.set(PENDING_KEY.format(shard=shard), 1, ex=int(report.retry_in) + PENDING_SECONDS)
            log.warning("stripe refused for now; shard %s backs off %.1fs: %s", shard, report.retry_in, retry[0].error)
            return report


def _unreported(settings: Settings, shard: int):
    with db.transaction(settings.database_url) as session:
        return session.execute(
            sa.select(
                _logs.id, _logs.organization_id, _logs.stripe_value, _logs.occurred_at, _logs.recorded_at,
                _logs.stripe_attempts, models.Organization.stripe_customer_id,
            )
            .join(models.Organization, models.Organization.id == _logs.organization_id)
            .where(_logs.status == models.UsageStatus.RECORDED, _in_shard(shard))
            .order_by(_logs.recorded_at)
            .limit(ROWS_PER_ROUND)
        ).all()


def _report_rows(settings: Settings, meter: StripeMeter, rows) -> dict[uuid.UUID, Result]:
    outcomes: dict[uuid.UUID, Result] = {}
    sendable = []
    for row in rows:
        if not row.stripe_customer_id:
            outcomes[row.id] = Result(
                Outcome.FAILED,
                f"Organization {row.organization_id} has no Stripe customer id; set it with `flask --app ingest_api "
                f"orgs set-stripe-customer --org {row.organization_id} --stripe-customer-id cus_...`, then "
                "`flask --app ingest_api usage retry --all-failed`.",
            )
        else:
            sendable.append(MeterEvent(row.id, row.stripe_customer_id, row.stripe_value, row.occurred_at))
    if sendable:
        outcomes |= meter.report(sendable)
    _save_outcomes(settings, outcomes)
    return outcomes


def _save_outcomes(settings: Settings, outcomes: dict) -> None:
    reported = [i for i, r in outcomes.items() if r.outcome is Outcome.REPORTED]
    retrying = {i: r.error for i, r in outcomes.items() if r.outcome is Outcome.RETRY}
    failed = [{"id": i, "status": models.UsageStatus.FAILED, "error": r.error} for i, r in outcomes.items() if r.outcome is Outcome.FAILED]
    with db.transaction(settings.database_url) as session:
        if reported:
            session.execute(
                sa.update(_logs)
                .where(_logs.id.in_(reported))
                .values(
                    status=models.UsageStatus.REPORTED, stripe_reported_at=sa.func.now(),
                    stripe_attempts=_logs.stripe_attempts + 1, error=None,
                )
            )
        if retrying:
            session.execute(
                sa.update(_logs)
                .where(_logs.id.in_(retrying))
                .values(stripe_attempts=_logs.stripe_attempts + 1, error="Last attempt: " + next(iter(retrying.values())))
            )
        if failed:
            session.execute(sa.update(_logs), failed)
    metrics.events_reported.inc(len(reported))
    metrics.events_failed.inc(len(failed))
    if reported:
        log.info("usage events reported to Stripe", extra={"event_ids": [str(i) for i in reported]})
    for row in failed:
        log.warning("usage event failed", extra={"event_id": str(row["id"]), "reason": row["error"]})


def flag_for_reconciliation(settings: Settings) -> int:
    """Rows recorded but unreported for longer than Stripe remembers identifiers: failed, flagged."""
    with db.transaction(settings.database_url) as session:
        return session.execute(
            sa.update(_logs)
            .where(_logs.status == models.UsageStatus.RECORDED, _logs.recorded_at < sa.func.now() - IDENTIFIER_WINDOW)
            .values(status=models.UsageStatus.FAILED, error=RECONCILE_ERROR)
        ).rowcount


def shards_with_stale_rows(settings: Settings, older_than: dt.timedelta) -> set[int]:
    """Shards holding rows recorded but not reported for longer than ``older_than``."""
    with db.transaction(settings.database_url) as session:
        organizations = session.scalars(
            # select().distinct(), not distinct(column): the latter is SQLAlchemy's unary
            # DISTINCT, meant for aggregates, and warns on every sweep.
            sa.select(_logs.organization_id)
            .distinct()
            .where(_logs.status == models.UsageStatus.RECORDED, _logs.recorded_at < sa.func.now() - older_than)
        )
        return {shard_of(org) for org in organizations}


def oldest_unreported_age_seconds(settings: Settings) -> float:
    with db.transaction(settings.database_url) as session:
        oldest = session.scalar(sa.select(sa.func.min(_logs.recorded_at)).where(_logs.status == models.UsageStatus.RECORDED))
    return 0.0 if oldest is None else (dt.datetime.now(dt.UTC) - oldest).total_seconds()
