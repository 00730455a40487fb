"""``reporting.report_round``: recorded rows to Stripe and their status, end to end against
PostgreSQL, Redis and the local Stripe server (no worker process)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from devtools.children import wait_until
from shared import db, models, operator_messages, queue, usage_rows
from shared.stripe_client import DEFAULT_NETWORK_RETRIES as SDK_NETWORK_RETRIES
from shared.stripe_meter import MeterEvent
from tests.support.billing import build_world_with_every_price, log_rows
from worker import recording, reporting, sweep_queries
from worker.stripe_reporting import StripeMeter

_logs = models.UserBillableRequestLog


@pytest.fixture(params=["v2", "v1"])
def meter(request, settings, stripe) -> StripeMeter:
    return StripeMeter(settings, api=request.param)


def organization_in_shard(factory, shard: int, **kwargs) -> models.Organization:
    """An organization whose id falls in ``shard`` (ids are random: draw until one does)."""
    while True:
        organization_id = uuid.uuid4()
        if reporting.shard_of(organization_id) == shard:
            organization = models.Organization(id=organization_id, name=f"org-{organization_id.hex[:10]}", **kwargs)
            with db.transaction(factory.settings.database_url) as session:
                session.add(organization)
            return organization


def record(settings, events) -> None:
    with db.transaction(settings.database_url) as session:
        result = recording.write_rows(session, events, value_decimals=settings.stripe_value_decimals)
    assert sorted(result.recorded) == sorted(e.id for e in events) and not result.rejected


def report(settings, broker, meter, shard) -> reporting.Round:
    """What a shard's chain of report tasks does: rounds while rows wait, until the shard
    is busy or backs off; what they did, together."""
    total = reporting.Round(shard)
    while True:
        done = reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)
        total.reported += done.reported
        total.failed |= done.failed
        total.busy, total.refused, total.retry_in = done.busy, done.refused, done.retry_in
        if not done.more:
            return total


def rows(settings) -> dict[uuid.UUID, models.UserBillableRequestLog]:
    return {row.id: row for row in log_rows(settings)}


def test_recorded_rows_become_reported(settings, world, broker, meter, stripe):
    events = [world.event(input_tokens=n, output_tokens=n) for n in range(1, 6)]
    record(settings, events)
    shard = reporting.shard_of(world.organization.id)

    done = report(settings, broker, meter, shard)

    assert not done.busy and done.retry_in is None and done.failed == {}
    assert sorted(done.reported) == sorted(e.id for e in events)
    for event in events:
        row = rows(settings)[event.id]
        assert (row.status, row.error, row.stripe_attempts) == ("reported", None, 1)
        assert row.stripe_reported_at is not None and row.stripe_reported_at >= row.recorded_at
    listed = {item["identifier"]: item for item in stripe.meter_events()}
    assert set(listed) == {str(e.id) for e in events}
    for event in events:
        row = rows(settings)[event.id]
        item = listed[str(event.id)]
        assert (item["customer"], item["value"]) == (world.organization.stripe_customer_id, str(row.stripe_value))
        assert item["timestamp"] == int(event.occurred_at.timestamp())

    # Nothing left: a second run reports nothing and sends nothing.
    assert report(settings, broker, meter, shard).reported == []
    assert len(stripe.meter_events()) == 5


def test_a_shard_reports_only_its_own_organizations(settings, factory, broker, meter, stripe):
    world = build_world_with_every_price(factory, organizations=1)
    shard = reporting.shard_of(world.organization.id)
    elsewhere = organization_in_shard(factory, (shard + 1) % reporting.REPORT_SHARDS, stripe_customer_id="cus_elsewhere")
    mine = world.event()
    theirs = world.event(organization_id=elsewhere.id)
    record(settings, [mine, theirs])

    done = report(settings, broker, meter, shard)

    assert done.reported == [mine.id]
    assert (rows(settings)[theirs.id].status, rows(settings)[mine.id].status) == ("recorded", "reported")


def test_more_rows_than_one_round(settings, world, broker, meter, stripe, monkeypatch):
    monkeypatch.setattr(reporting, "ROWS_PER_ROUND", 7)
    events = [world.event(input_tokens=n) for n in range(30)]
    record(settings, events)

    done = report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert sorted(done.reported) == sorted(e.id for e in events)
    assert {row.status for row in log_rows(settings)} == {"reported"}
    assert len(stripe.meter_events()) == 30


def test_an_organization_without_a_stripe_customer_id_fails_its_rows_with_a_reason(settings, factory, broker, meter, stripe):
    world = build_world_with_every_price(factory, customer_ids=[None])
    event = world.event()
    record(settings, [event])

    done = report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert done.reported == [] and list(done.failed) == [event.id]
    (row,) = log_rows(settings)
    assert row.status == "failed"
    assert row.error == done.failed[event.id]
    assert f"Organization {world.organization.id} has no Stripe customer id" in row.error
    assert stripe.meter_events() == []
    # Kept, not re-sent by later runs.
    assert report(settings, broker, meter, reporting.shard_of(world.organization.id)).failed == {}


def test_a_permanent_stripe_refusal_fails_only_that_row(settings, factory, broker, meter, stripe):
    world = build_world_with_every_price(factory, organizations=1)
    bad = organization_in_shard(factory, reporting.shard_of(world.organization.id), stripe_customer_id="")
    good_event, bad_event = world.event(), world.event(organization_id=bad.id)
    record(settings, [good_event, bad_event])

    done = report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert done.reported == [good_event.id]
    stored = rows(settings)
    # An empty customer id is "no customer id" to the reporter; it never reaches Stripe.
    assert stored[bad_event.id].status == "failed" and "no Stripe customer id" in stored[bad_event.id].error
    assert stored[good_event.id].status == "reported"
    assert [item["identifier"] for item in stripe.meter_events()] == [str(good_event.id)]


def test_an_event_too_old_for_stripe_is_failed_with_the_reason_and_never_sent(settings, factory, broker, meter, stripe):
    world = build_world_with_every_price(factory, organizations=1)
    event = world.event(occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=36))  # beyond Stripe's 35 days
    record(settings, [event])

    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    (row,) = log_rows(settings)
    assert row.status == "failed"
    assert row.error.startswith("Too old for Stripe") and "35 days" in row.error and "not sent" in row.error
    assert stripe.meter_events() == stripe.meter_events("invalid") == []  # never sent


def test_a_held_shard_lock_means_busy_and_nothing_is_sent(settings, world, broker, meter, stripe):
    record(settings, [world.event()])
    shard = reporting.shard_of(world.organization.id)
    other_reporter = broker.lock(reporting.LOCK_KEY.format(shard=shard), timeout=60)
    assert other_reporter.acquire(blocking=False)
    try:
        done = report(settings, broker, meter, shard)
    finally:
        other_reporter.release()

    assert done.busy and done.reported == []
    assert [row.status for row in log_rows(settings)] == ["recorded"]
    assert stripe.meter_events() == []
    assert report(settings, broker, meter, shard).reported != []


class SlowReporter:
    """One event recorded, and a reporter of its shard in a thread of its own whose Stripe
    call takes ``stripe_latency_ms``; the shard lock lives 1 s and is renewed every 0.2 s."""

    def __init__(self, settings, world, broker, stripe, monkeypatch, *, stripe_latency_ms: int):
        monkeypatch.setattr(reporting, "LOCK_SECONDS", 1)
        monkeypatch.setattr(reporting, "LOCK_RENEW_SECONDS", 0.2)
        self.settings, self.broker = settings, broker
        self.event = world.event()
        record(settings, [self.event])
        self.shard = reporting.shard_of(world.organization.id)
        self.lock_key = reporting.LOCK_KEY.format(shard=self.shard)
        stripe.set_faults(latency_ms=stripe_latency_ms)
        self.outcome = None
        self.thread = threading.Thread(target=self._report)

    def _report(self):
        self.outcome = report(self.settings, self.broker, StripeMeter(self.settings, api="v1"), self.shard)

    def __enter__(self) -> SlowReporter:
        self.thread.start()
        wait_until(lambda: self.broker.exists(self.lock_key), 10, interval=0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(30)


@pytest.mark.usefixtures("committed_database")  # a reporter in another thread, on a connection of its own
def test_the_shard_lock_is_renewed_while_a_slow_report_runs(settings, world, broker, stripe, monkeypatch):
    slow = SlowReporter(settings, world, broker, stripe, monkeypatch, stripe_latency_ms=2500)
    started = time.monotonic()
    with slow:
        wait_until(lambda: time.monotonic() - started > 1.8 or not slow.thread.is_alive(), 10, interval=0.05)
        # Well past the lock's time to live, its holder is still at work and still holds it.
        assert slow.thread.is_alive()
        assert report(settings, broker, StripeMeter(settings, api="v1"), slow.shard).busy

    assert slow.outcome.reported == [slow.event.id] and not slow.outcome.busy
    assert not broker.exists(slow.lock_key)
    assert len(stripe.meter_events()) == 1


@pytest.mark.usefixtures("committed_database")  # a reporter in another thread, on a connection of its own
def test_a_hung_report_lets_its_lock_go(settings, world, broker, stripe, monkeypatch):
    monkeypatch.setattr(reporting, "ROUND_MAX_SECONDS", 0.5)
    # One Stripe call far longer than a round may take.
    with SlowReporter(settings, world, broker, stripe, monkeypatch, stripe_latency_ms=3000) as hung:
        wait_until(lambda: not broker.exists(hung.lock_key), 10, interval=0.02)
        assert hung.thread.is_alive()  # the lock was let go while its holder was still stuck

    assert hung.outcome.reported == [hung.event.id]  # its round still ended, and saved what Stripe took
    assert [row.status for row in log_rows(settings)] == ["reported"]
    assert len(stripe.meter_events()) == 1


def test_a_lock_left_by_a_dead_reporter_frees_the_shard_when_it_expires(settings, world, broker, meter, stripe):
    event = world.event()
    record(settings, [event])
    shard = reporting.shard_of(world.organization.id)
    # A reporter took the lock and died: nobody renews or releases it.
    broker.set(reporting.LOCK_KEY.format(shard=shard), "token-of-a-dead-worker", px=1500)

    assert report(settings, broker, meter, shard).busy
    wait_until(lambda: report(settings, broker, meter, shard).reported, 30, interval=0.1)
    assert [row.status for row in log_rows(settings)] == ["reported"]
    # The lock's time to live bounds how long a crash stalls a shard (and it used to be 5 minutes).
    assert reporting.LOCK_SECONDS <= 10 and queue.REPORT_PENDING_MS <= 10_000


def test_a_stripe_outage_backs_off_then_reports_once(settings, world, broker, meter, stripe):
    events = [world.event(input_tokens=n) for n in range(3)]
    record(settings, events)
    shard = reporting.shard_of(world.organization.id)
    assert meter.meter_problem() is None  # looked at once, trusted for a while: only sends fail below
    # Stripe stores a v1 key's first answer, a 500 included, and the SDK does not retry
    # it: a v1 round makes one call; a v2 round the SDK's three attempts (v2 re-runs).
    calls_per_round = 1 if meter.api == "v1" else SDK_NETWORK_RETRIES + 1
    stripe.set_faults(fail_next=2 * calls_per_round, status=500)  # two full rounds

    first = report(settings, broker, meter, shard)

    assert first.retry_in is not None and 0.5 <= first.retry_in <= 60
    assert first.reported == [] and first.failed == {}
    for row in log_rows(settings):
        assert (row.status, row.stripe_attempts) == ("recorded", 1)
        assert row.error.startswith("Last attempt: Stripe answered 500")
    # While the shard backs off, another run sends nothing and says how long to wait.
    during = report(settings, broker, meter, shard)
    assert during.retry_in is not None and during.retry_in <= first.retry_in and during.reported == []
    assert stripe.faults()["fail_next"] == calls_per_round

    reports = []

    def reported():
        done = report(settings, broker, meter, shard)
        reports.append(done)
        return done.reported

    wait_until(reported, 60, interval=0.1)

    assert sorted(reports[-1].reported) == sorted(e.id for e in events)
    # The second round failed too (attempt 2), the third went through (attempt 3): in v1
    # under a fresh key each time, else the stored 500 would be replayed for ever.
    for row in log_rows(settings):
        assert (row.status, row.error, row.stripe_attempts) == ("reported", None, 3)
    identifiers = [item["identifier"] for item in stripe.meter_events()]
    assert sorted(identifiers) == sorted(str(e.id) for e in events)


def test_a_rate_limit_burst_then_success(settings, world, broker, stripe):
    meter = StripeMeter(settings, api="v2")
    events = [world.event() for _ in range(2)]
    record(settings, events)
    shard = reporting.shard_of(world.organization.id)
    assert meter.meter_problem() is None
    stripe.set_faults(fail_next=3, status=429)

    assert report(settings, broker, meter, shard).retry_in is not None
    wait_until(lambda: report(settings, broker, meter, shard).reported, 60, interval=0.1)

    assert {row.status for row in log_rows(settings)} == {"reported"}
    assert len(stripe.meter_events()) == 2


def test_wake_ups_coalesce_until_the_reporter_stands_down(settings, world, broker, meter):
    shard = reporting.shard_of(world.organization.id)
    assert queue.wake_reporters(broker, [shard]) == [shard]
    assert queue.wake_reporters(broker, [shard, shard]) == []
    report(settings, broker, meter, shard)  # clears the flag when it stands down
    assert queue.wake_reporters(broker, [shard]) == [shard]


def test_rows_committed_while_the_reporter_runs_are_reported_by_it(settings, world, broker, meter, stripe, monkeypatch):
    """The reporter looks for rows once more after clearing its flag: rows whose wake-up
    was swallowed because it was still running are not left behind."""
    shard = reporting.shard_of(world.organization.id)
    first, late = world.event(), world.event()
    record(settings, [first])
    assert queue.wake_reporters(broker, [shard]) == [shard]
    original = reporting._unreported

    def commit_more_during_the_round(session, shard_):
        rows = original(session, shard_)
        record(settings, [late])
        assert queue.wake_reporters(broker, [shard]) == []  # swallowed: the reporter runs
        return rows

    monkeypatch.setattr(reporting, "_unreported", commit_more_during_the_round)
    done = reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)
    monkeypatch.setattr(reporting, "_unreported", original)

    assert done.reported == [first.id] and done.more  # it goes on, in a new task
    assert report(settings, broker, meter, shard).reported == [late.id]


def set_recorded_at(settings, event_id, recorded_at) -> None:
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).where(_logs.id == event_id).values(recorded_at=recorded_at))


def set_first_sent_at(settings, event_id, first_sent_at) -> None:
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).where(_logs.id == event_id).values(stripe_first_sent_at=first_sent_at))


def test_flag_for_reconciliation_flags_rows_first_sent_23_hours_ago_and_still_unreported(settings, world, broker, meter):
    now = dt.datetime.now(dt.UTC)
    stale, fresh, never_sent, reported_long_ago = world.event(), world.event(), world.event(), world.event()
    record(settings, [reported_long_ago])
    report(settings, broker, meter, reporting.shard_of(world.organization.id))
    record(settings, [stale, fresh, never_sent])
    set_first_sent_at(settings, stale.id, now - dt.timedelta(hours=23, minutes=1))
    set_first_sent_at(settings, fresh.id, now - dt.timedelta(hours=22, minutes=59))
    set_recorded_at(settings, never_sent.id, now - dt.timedelta(days=3))  # Stripe cannot have it
    set_first_sent_at(settings, reported_long_ago.id, now - dt.timedelta(days=3))

    assert flag_for_reconciliation(settings) == 1

    stored = rows(settings)
    assert (stored[stale.id].status, stored[stale.id].error) == ("failed", operator_messages.RECONCILE_FIRST)
    assert (stored[fresh.id].status, stored[fresh.id].error) == ("recorded", None)
    assert (stored[never_sent.id].status, stored[never_sent.id].error) == ("recorded", None)
    assert stored[reported_long_ago.id].status == "reported"
    assert flag_for_reconciliation(settings) == 0


def test_the_reporter_never_sends_a_row_first_sent_longer_ago_than_stripe_deduplicates(settings, world, broker, meter, stripe):
    stale, fresh = world.event(), world.event()
    record(settings, [stale, fresh])
    set_first_sent_at(settings, stale.id, dt.datetime.now(dt.UTC) - dt.timedelta(hours=23, minutes=1))

    round_ = report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert round_.reported == [fresh.id]
    assert [item["identifier"] for item in stripe.meter_events()] == [str(fresh.id)]
    assert rows(settings)[stale.id].status == "recorded"  # left for the sweep to flag


def test_a_send_marks_the_first_send_before_the_call(settings, world, broker, meter, stripe):
    event = world.event()
    record(settings, [event])
    stripe.set_faults(fail_next=10, status=503)  # the call never succeeds

    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    stored = rows(settings)[event.id]
    assert stored.status == "recorded" and stored.stripe_first_sent_at is not None


def flag_for_reconciliation(settings) -> int:
    with db.transaction(settings.database_url) as session:
        return usage_rows.flag_for_reconciliation(session)


def test_shards_with_rows_waiting(settings, world):
    event = world.event()
    record(settings, [event])
    set_recorded_at(settings, event.id, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))

    with db.transaction(settings.database_url) as session:
        assert sweep_queries.shards_waiting(session, dt.timedelta(minutes=1)) == {reporting.shard_of(world.organization.id)}
        assert sweep_queries.shards_waiting(session, dt.timedelta(minutes=10)) == set()


def test_a_row_stripe_counted_is_not_sent_again_once_stripe_no_longer_knows_its_identifier(
    settings, world, broker, meter, stripe
):
    """A row Stripe counted, failed since (a drop that lagging summaries suggested), back
    to recorded 25 hours after its first send: Stripe no longer deduplicates its
    identifier (the local server's clock moved on), so the reporter must not send it; the
    sweep flags it for reconciliation instead."""
    event = world.event()
    record(settings, [event])
    shard = reporting.shard_of(world.organization.id)
    assert report(settings, broker, meter, shard).reported == [event.id]
    with db.transaction(settings.database_url) as session:
        usage_rows.fail_dropped(session, {event.id: "Stripe's summary lacked it (it lagged)"})
    stripe.advance_clock(25 * 3600)
    set_first_sent_at(settings, event.id, dt.datetime.now(dt.UTC) - dt.timedelta(hours=25))
    with db.transaction(settings.database_url) as session:
        usage_rows.redrive(session, [event.id])  # not reconciled: its first send is kept

    assert report(settings, broker, meter, shard).reported == []
    assert flag_for_reconciliation(settings) == 1
    assert [item["identifier"] for item in stripe.meter_events()] == [str(event.id)]  # counted once
    # What a blind resend would have done: Stripe, past its window, counts it again.
    (row,) = log_rows(settings)
    again = meter.report([MeterEvent(row.id, world.organization.stripe_customer_id, row.stripe_value, row.occurred_at, 1)])
    assert again[row.id].outcome.value == "reported"
    assert [item["identifier"] for item in stripe.meter_events()] == [str(event.id)] * 2
