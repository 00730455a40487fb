"""Celery tasks of the billing pipeline. Each one does one batch of work and says what it
did with the event ids (so Flower's search finds the task that recorded or reported an
event); while more waits it goes on in a new task. All are safe to run twice: recording
is idempotent by event id, reporting by Stripe identifier."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

import redis
import sqlalchemy.exc
import stripe
from celery import shared_task

from shared import intake, metrics, operator_messages, pipeline_status, queue, usage_rows, usage_voids
from worker import beat, recording, reporting, stripe_error_reports, sweep_queries
from worker.task_base import BillingTask

log = logging.getLogger(__name__)
# Recorded rows not reported after this long are woken by the sweep (healthy ones are
# reported within a second of being recorded).
STALE_AFTER = dt.timedelta(seconds=5)
# A Stripe event received and not handled after this long may have lost its task: sent
# again if no chain holds its lease.
STRIPE_EVENT_STALE_AFTER = dt.timedelta(seconds=30)
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, redis.ConnectionError, redis.TimeoutError)
_RETRY = dict(autoretry_for=_TRANSIENT, retry_backoff=True, retry_backoff_max=30, retry_jitter=True, max_retries=None)


class StripeRefused(Exception):
    """Stripe refused for now (rate limit, outage); the task retries after a backoff."""


@shared_task(base=BillingTask, bind=True, name=queue.RECORD, time_limit=120, **_RETRY)
def record_intake_batch(self: BillingTask) -> dict:
    """Record one batch from the intake; wake the reporters of what was recorded."""
    reader = intake.IntakeReader(self.broker)
    count, result = recording.record_next_batch(
        self.transaction, reader, value_decimals=self.settings.stripe_value_decimals
    )
    pipeline_status.intake_read(self.broker, time.time())
    if count:
        metrics.events_recorded.inc(len(result.recorded))
        metrics.events_rejected.inc(len(result.rejected))
        if result.recorded:
            log.info("usage events recorded", extra={"event_ids": [str(i) for i in result.recorded]})
        queue.wake_reporters(self.broker, {reporting.shard_of(organization) for organization in result.organizations})
    if count == recording.BATCH_SIZE or reader.go_to_sleep():
        self.apply_async()
    return {
        "recorded": len(result.recorded),
        "rejected": len(result.rejected),
        "recorded_ids": [str(i) for i in result.recorded],
        "rejected_ids": {str(i): reason for i, reason in result.rejected.items()},
    }


# A report round that outlives ROUND_MAX_SECONDS has already let its shard go; the hard
# limit ends its pool process soon after, so a hung Stripe call cannot hold a slot for ever.
@shared_task(base=BillingTask, bind=True, name=queue.REPORT, time_limit=reporting.ROUND_MAX_SECONDS + 30, **_RETRY)
def report(self: BillingTask, shard: int) -> dict:
    """Report one round of a shard's recorded rows to Stripe; one reporter per shard."""
    round_ = reporting.report_round(self.transaction, self.broker, self.meter, shard)
    if round_.busy:
        return {"shard": shard, "busy": True}
    if round_.retry_in is not None and not (round_.reported or round_.failed or round_.voids.completed or round_.voids.failed):
        # Nothing taken this time: a retry, with Stripe's reason, as Flower shows it.
        raise self.retry(exc=StripeRefused(round_.refused or "backing off after a refusal"), countdown=round_.retry_in)
    if round_.retry_in is not None:
        self.apply_async(args=[shard], countdown=round_.retry_in)
    elif round_.more:
        self.apply_async(args=[shard])
    return {
        "shard": shard,
        "reported": len(round_.reported),
        "failed": len(round_.failed),
        "reported_ids": [str(i) for i in round_.reported],
        "failed_ids": {str(i): reason for i, reason in round_.failed.items()},
        **({"voided_ids": [str(i) for i in round_.voids.completed]} if round_.voids.completed else {}),
        **({"void_failed_ids": {str(i): r for i, r in round_.voids.failed.items()}} if round_.voids.failed else {}),
        **({"refused": round_.refused, "retry_in": round(round_.retry_in, 1)} if round_.retry_in is not None else {}),
    }


@shared_task(base=BillingTask, bind=True, name=queue.STRIPE_EVENT, time_limit=120, **_RETRY)
def stripe_event(self: BillingTask, event_id: str, lease: str | None = None) -> dict:
    """Handle one of Stripe's asynchronous error reports: the reported rows Stripe dropped
    become failed, with Stripe's reason. One chain per event: ``lease`` is its token (a
    task sent before leases existed takes one)."""
    lease = lease or uuid.uuid4().hex
    if not queue.hold_stripe_event_lease(self.broker, event_id, lease, queue.STRIPE_EVENT_LEASE_MS):
        return {"stripe_event": event_id, "another_chain": True}
    with self.transaction() as session:
        received_at, already_handled = stripe_error_reports.received_at(session, event_id)
    if already_handled:
        return {"stripe_event": event_id, "already_handled": True}
    if received_at is None:
        log.warning("stripe event not received: not handled", extra={"stripe_event_id": event_id})
        return {"stripe_event": event_id, "not_received": True}
    client = self.meter.client
    try:
        event = client.v2.core.events.retrieve(event_id)
    except stripe.StripeError as error:
        if stripe_error_reports.is_final(error):
            metrics.stripe_event_fetches.labels("refused").inc()
            return _end_unhandled(self, event_id, "refused", f"Stripe answered {error.http_status} for it ({error.user_message or error})")
        metrics.stripe_event_fetches.labels("failed").inc()
        age = dt.datetime.now(dt.UTC) - received_at
        if age >= stripe_error_reports.MAX_AGE:
            return _end_unhandled(self, event_id, "expired", f"still not fetched after {age} (last: {error.http_status or 'no answer'}: {error})")
        countdown = stripe_error_reports.retry_delay(self.request.retries)
        return _later(self, event_id, lease, countdown, StripeRefused(f"could not fetch Stripe event {event_id}: {error}"))
    metrics.stripe_event_fetches.labels("fetched").inc()
    report = stripe_error_reports.ErrorReport.from_event(event)
    try:
        with self.transaction() as session:
            if not stripe_error_reports.claim(session, event_id):
                return {"stripe_event": event_id, "already_handled": True}
            failed, voids_failed = _apply_report(self, session, client, report)
    except stripe_error_reports.SummariesNotSettled as waiting:
        # Capped like a fetch retry, far from the broker's visibility timeout; early is harmless.
        countdown = min(stripe_error_reports.RETRY_MAX_SECONDS,
                        max(1.0, (waiting.settles_at - dt.datetime.now(dt.UTC)).total_seconds()))
        log.info("stripe error report waits for the summaries to settle",
                 extra={"stripe_event_id": event_id, "settles_at": waiting.settles_at.isoformat()})
        return _later(self, event_id, lease, countdown, waiting)
    metrics.stripe_error_reports.labels(report.type).inc()
    log.warning(
        "stripe error report", extra={"stripe_event_id": event_id, "type": report.type, "errors": report.error_count,
                                      "event_ids": list(failed), "void_event_ids": list(voids_failed)},
    )
    return {
        "stripe_event": event_id,
        "type": report.type,
        "errors_reported": report.error_count,
        "failed": len(failed),
        "failed_ids": failed,
        "void_failed_ids": voids_failed,
    }


def _apply_report(self: BillingTask, session, client, report) -> tuple[dict[str, str], dict[str, str]]:
    """Fail what the report says Stripe dropped, rows and voids' negative events, and
    record the event handled: (failed rows, failed voids), each id with its reason."""
    void_reasons = stripe_error_reports.dropped_voids(session, report)
    dropped = stripe_error_reports.dropped_rows(
        session, client, report, dt.timedelta(seconds=self.settings.stripe_summary_settle_seconds), len(void_reasons),
    )
    failed = usage_rows.fail_dropped(session, dropped)
    voids_failed = usage_voids.dropped(session, void_reasons)
    voids_text = f" and {len(voids_failed)} void(s)" if voids_failed else ""
    stripe_error_reports.handled(
        session, report.event_id, f"{len(failed)} row(s){voids_text} failed of {report.error_count} error(s) reported"
    )
    return {str(i): dropped[i] for i in failed}, {str(i): void_reasons[i] for i in voids_failed}


def _later(self: BillingTask, event_id: str, lease: str, countdown: float, why: Exception) -> dict:
    """Come back to the event in ``countdown`` seconds, its lease held until then."""
    if not queue.hold_stripe_event_lease(self.broker, event_id, lease, countdown * 1000 + queue.STRIPE_EVENT_LEASE_MS):
        return {"stripe_event": event_id, "another_chain": True}
    raise self.retry(args=[event_id, lease], exc=why, countdown=countdown) from None


def _end_unhandled(self: BillingTask, event_id: str, reason: str, why: str) -> dict:
    """End the event without its report: the rows it might name stay as they are."""
    outcome = operator_messages.stripe_event_unhandled(why)
    with self.transaction() as session:
        ended = stripe_error_reports.handled(session, event_id, outcome)
    if ended:
        metrics.stripe_events_unhandled.labels(reason).inc()
        log.warning("stripe event not handled", extra={"stripe_event_id": event_id, "reason": reason, "outcome": outcome})
    return {"stripe_event": event_id, "unhandled": reason, "outcome": outcome}


# Beat runs only the safety sweep. A sweep nobody ran in time is dropped rather than
# piled up behind a stopped worker.
@beat.every(queue.SWEEP_SECONDS, entry="sweep", expires=queue.SWEEP_SECONDS - 1)
@shared_task(base=BillingTask, bind=True, name=queue.SWEEP, time_limit=60)
def sweep(self: BillingTask) -> dict:
    """Wake what a killed worker or a lost wake-up left waiting; flag rows too old to resend."""
    with self.transaction() as session:
        flagged = usage_rows.flag_for_reconciliation(session)
        shards = sweep_queries.shards_waiting(session, STALE_AFTER) | sweep_queries.shards_with_voids_due(session)
        lost_stripe_events = sweep_queries.stripe_events_unhandled(session, STRIPE_EVENT_STALE_AFTER)
    lost_stripe_events = [event_id for event_id in lost_stripe_events if queue.start_stripe_event(self.broker, event_id)]
    shards_woken = queue.wake_reporters(
        self.broker, [shard for shard in shards if not reporting.shard_is_handled(self.broker, shard)]
    )
    recorder_woken = intake.recorder_needed(self.broker) and queue.wake_recorder()
    pipeline_status.swept(self.broker, time.time())
    return {
        "flagged": flagged, "shards_woken": shards_woken, "recorder_woken": recorder_woken,
        "stripe_events_resent": lost_stripe_events,
    }


@shared_task(name=queue.PING)
def ping() -> str:
    """A no-op: checks that a worker consumes, and is the per-task ceiling in bench/."""
    return "pong"
