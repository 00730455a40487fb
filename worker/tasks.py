"""Celery tasks of the billing pipeline. They take ids, load what they need themselves,
and are safe to run twice: recording is idempotent by event id, reporting by Stripe
identifier."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time

import redis
import sqlalchemy.exc
from celery import shared_task

from shared import queue
from shared.config import get_settings
from worker import recording, reporting
from worker.stripe_reporting import StripeMeter

log = logging.getLogger(__name__)
# A drain hands its pool process back after this long, so reporting is never starved.
DRAIN_SECONDS = 5.0
# Recorded rows not reported after this long are re-driven by the sweeper.
STALE_AFTER = dt.timedelta(seconds=60)
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, redis.ConnectionError, redis.TimeoutError)


@functools.cache
def broker() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().broker_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10, decode_responses=True
    )


@functools.cache
def meter() -> StripeMeter:
    settings = get_settings()
    return StripeMeter(settings, api=settings.stripe_meter_api)


def wake_reporters(organizations) -> None:
    for shard in {reporting.shard_of(org) for org in organizations}:
        if reporting.claim_wakeup(broker(), shard):
            report_shard.delay(shard)


@shared_task(
    name=queue.DRAIN_INTAKE, bind=True, autoretry_for=_TRANSIENT,
    retry_backoff=True, retry_backoff_max=30, retry_jitter=True, max_retries=None,
)
def drain_intake(self) -> dict:
    """Record what the intake stream holds, in batches; wake the reporters of what was recorded."""
    started = time.monotonic()
    result = recording.drain(get_settings(), broker(), deadline=started + DRAIN_SECONDS, clock=time.monotonic)
    wake_reporters(result.organizations)
    if time.monotonic() - started >= DRAIN_SECONDS:
        drain_intake.delay()  # more may be waiting; continue in a fresh task
    return {"recorded": len(result.recorded), "rejected": len(result.rejected)}


@shared_task(
    name=queue.REPORT_SHARD, bind=True, autoretry_for=_TRANSIENT,
    retry_backoff=True, retry_backoff_max=30, retry_jitter=True, max_retries=None,
)
def report_shard(self, shard: int) -> dict:
    """Report a shard's recorded rows to Stripe; one reporter per shard at a time."""
    report = reporting.report_shard(get_settings(), broker(), meter(), shard)
    if report.busy:
        # The holder may have read before our rows were committed: look again shortly.
        raise self.retry(countdown=1, max_retries=None)
    if report.retry_in is not None:
        raise self.retry(countdown=report.retry_in, max_retries=None)
    return {"reported": len(report.reported), "failed": len(report.failed)}


@shared_task(name=queue.SWEEP_UNREPORTED)
def sweep_unreported() -> dict:
    """Re-drive rows a dead worker left recorded but unreported; flag the ones too old to resend."""
    settings = get_settings()
    flagged = reporting.flag_for_reconciliation(settings)
    shards = reporting.shards_with_stale_rows(settings, STALE_AFTER)
    for shard in shards:
        report_shard.delay(shard)
    return {"flagged": flagged, "shards": sorted(shards)}


@shared_task(name="billing.ping")
def ping() -> str:
    """A no-op: checks that a worker consumes, and is the per-task ceiling in bench/."""
    return "pong"
