"""Voids, Stripe's side: the shard's reporter cancels or negates a voided row exactly once,
against PostgreSQL, Redis and the local Stripe server (``reporting.report_round``)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from shared import db, models, usage_voids
from shared.stripe_client import DEFAULT_NETWORK_RETRIES as SDK_NETWORK_RETRIES
from tests.support.billing import log_rows
from tests.support.stripe_sdk import settle
from tests.worker.test_reporting import record, report
from worker import reporting, stripe_error_reports
from worker.stripe_reporting import StripeMeter

_logs = models.UserBillableRequestLog


@pytest.fixture(params=["v2", "v1"])
def meter(request, settings, stripe) -> StripeMeter:
    return StripeMeter(settings, api=request.param)


def ask_void(settings, row_id, reason="sent twice") -> models.UsageVoid:
    with db.transaction(settings.database_url) as session:
        void = usage_voids.request(session, row_id, reason, "user-1")
        session.expunge(void)
    return void


def void_of(settings, row_id) -> models.UsageVoid:
    with db.transaction(settings.database_url) as session:
        void = session.get(models.UsageVoid, row_id)
        session.expunge(void)
    return void


def first_sent_ago(settings, row_id, ago: dt.timedelta) -> None:
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).where(_logs.id == row_id).values(stripe_first_sent_at=sa.func.now() - ago))


def reported_event(settings, world, broker, meter, **fields):
    event = world.event(**fields)
    record(settings, [event])
    assert report(settings, broker, meter, reporting.shard_of(world.organization.id)).reported == [event.id]
    return event


def adjustments(stripe) -> list[dict]:
    return [call for call in stripe.calls() if call["path"].endswith("meter_event_adjustments")]


def test_a_row_never_sent_is_voided_at_once_and_never_goes_to_stripe(settings, world, broker, meter, stripe):
    event = world.event()
    record(settings, [event])

    void = ask_void(settings, event.id)
    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert (void.method, void.state) == ("never_sent", "completed") and void.completed_at is not None
    assert [row.status for row in log_rows(settings)] == ["voided"]
    assert stripe.meter_events() == stripe.meter_events("pending") == [] and adjustments(stripe) == []


def test_a_reported_row_is_cancelled_once_and_leaves_stripes_summaries(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter)

    assert ask_void(settings, event.id).method == "stripe_cancel"
    assert ask_void(settings, event.id, "asked again").reason == "sent twice"  # a retried void: the same void
    done = reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, reporting.shard_of(world.organization.id))
    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert done.voids.completed == [event.id]
    void = void_of(settings, event.id)
    assert (void.state, void.stripe_identifier, void.stripe_attempts) == ("completed", str(event.id), 1)
    assert [row.status for row in log_rows(settings)] == ["voided"]
    assert len(adjustments(stripe)) == 1
    settle(stripe)
    (listed,) = stripe.meter_events()
    assert listed["canceled_at"] is not None


def test_stripe_refusing_a_cancel_for_now_then_accepting_it(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter)
    ask_void(settings, event.id)
    stripe.set_faults(fail_next=SDK_NETWORK_RETRIES + 1, status=500)  # more than the SDK's own retries
    shard = reporting.shard_of(world.organization.id)

    refused = reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)
    assert refused.retry_in is not None and refused.voids.completed == []
    assert void_of(settings, event.id).state == "pending" and "500" in void_of(settings, event.id).error
    broker.delete(reporting.BACKOFF_KEY.format(shard=shard))  # the backoff is over
    report(settings, broker, meter, shard)

    assert void_of(settings, event.id).state == "completed"
    assert [row.status for row in log_rows(settings)] == ["voided"]


def test_a_worker_killed_after_its_cancel_went_out_cancels_once_on_the_next_round(settings, world, broker, meter, stripe, monkeypatch):
    event = reported_event(settings, world, broker, meter)
    ask_void(settings, event.id)
    shard = reporting.shard_of(world.organization.id)
    sent = meter.cancel

    def cancel_then_die(*args):
        sent(*args)
        raise SystemExit("killed after the call, before its answer was saved")

    monkeypatch.setattr(meter, "cancel", cancel_then_die)
    with pytest.raises(SystemExit):
        reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)
    monkeypatch.undo()
    assert void_of(settings, event.id).state == "pending"
    broker.delete(reporting.LOCK_KEY.format(shard=shard))  # the dead holder's lock, expired

    report(settings, broker, meter, shard)

    assert void_of(settings, event.id).state == "completed"
    # The second call carries the first's key: Stripe replays its answer, cancels nothing more.
    assert [c["status"] for c in adjustments(stripe)] == [200, 200]
    settle(stripe)
    assert [e["canceled_at"] is not None for e in stripe.meter_events()] == [True]


def test_a_row_first_sent_more_than_23_hours_ago_is_negated_at_its_own_time(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter, occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    first_sent_ago(settings, event.id, dt.timedelta(hours=30))

    assert ask_void(settings, event.id).method == "stripe_negative_event"
    report(settings, broker, meter, reporting.shard_of(world.organization.id))
    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    (row,) = log_rows(settings)
    void = void_of(settings, event.id)
    assert (row.status, void.state, void.stripe_identifier) == ("voided", "completed", f"void-{event.id}")
    settle(stripe)
    listed = {item["identifier"]: item for item in stripe.meter_events()}
    assert set(listed) == {str(event.id), f"void-{event.id}"}
    negative = listed[f"void-{event.id}"]
    assert (negative["value"], negative["timestamp"]) == (str(-row.stripe_value), int(event.occurred_at.timestamp()))


def test_an_event_older_than_stripes_window_waits_for_a_manual_credit(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter, occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    first_sent_ago(settings, event.id, dt.timedelta(days=2))
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).values(occurred_at=sa.func.now() - dt.timedelta(days=40)))

    assert ask_void(settings, event.id).method == "manual_credit"
    report(settings, broker, meter, reporting.shard_of(world.organization.id))
    assert (void_of(settings, event.id).state, log_rows(settings)[0].status) == ("pending", "reported")
    assert adjustments(stripe) == [] and len(stripe.meter_events()) == 1

    with db.transaction(settings.database_url) as session:
        usage_voids.credit_issued(session, event.id, "credit note CN-1")
    assert (void_of(settings, event.id).state, log_rows(settings)[0].status) == ("completed", "voided")


def test_a_void_racing_a_report_in_flight_cancels_after_it(settings, world, broker, meter, stripe, monkeypatch):
    """The void is asked while the reporter's call carries the row: the row is reported by
    that call, and the cancel goes out in the shard's next round, after it."""
    event = world.event()
    record(settings, [event])
    shard = reporting.shard_of(world.organization.id)
    sent = meter.report

    def void_while_in_flight(events):
        assert ask_void(settings, event.id).method == "stripe_cancel"  # the send is marked: not never_sent
        return sent(events)

    monkeypatch.setattr(meter, "report", void_while_in_flight)
    first = reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)
    monkeypatch.undo()
    assert first.reported == [event.id] and void_of(settings, event.id).state == "pending"

    report(settings, broker, meter, shard)

    assert void_of(settings, event.id).state == "completed"
    assert [row.status for row in log_rows(settings)] == ["voided"]
    settle(stripe)
    assert [e["canceled_at"] is not None for e in stripe.meter_events()] == [True]


def test_a_void_asked_before_the_send_keeps_the_row_from_stripe(settings, world, broker, meter, stripe, monkeypatch):
    """The void commits between the reporter's read and its send: the row is not sent."""
    event = world.event()
    record(settings, [event])
    shard = reporting.shard_of(world.organization.id)
    read = reporting._unreported

    def read_then_void(session, shard_):
        rows = read(session, shard_)
        ask_void(settings, event.id)
        return rows

    monkeypatch.setattr(reporting, "_unreported", read_then_void)
    reporting.report_round(lambda: db.transaction(settings.database_url), broker, meter, shard)

    assert void_of(settings, event.id).method == "never_sent"
    assert [row.status for row in log_rows(settings)] == ["voided"]
    assert stripe.meter_events() == stripe.meter_events("pending") == []


def test_a_cancel_stripe_has_no_event_for_completes_only_once_stripe_had_time(settings, world, broker, stripe):
    """A recorded row sent once without an answer (Stripe never got it): the cancel finds
    nothing; the void waits the settle time before it calls that nothing billed."""
    meter = StripeMeter(dataclasses.replace(settings, stripe_summary_settle_seconds=3600), api="v1")
    event = world.event()
    record(settings, [event])
    first_sent_ago(settings, event.id, dt.timedelta(minutes=5))
    shard = reporting.shard_of(world.organization.id)

    assert ask_void(settings, event.id).method == "stripe_cancel"
    report(settings, broker, meter, shard)
    waiting = void_of(settings, event.id)
    assert waiting.state == "pending" and waiting.retry_at is not None and "no such event" in waiting.error

    patient = StripeMeter(dataclasses.replace(settings, stripe_summary_settle_seconds=0), api="v1")
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(models.UsageVoid).values(retry_at=None))
    report(settings, broker, patient, shard)
    assert void_of(settings, event.id).state == "completed"
    assert [row.status for row in log_rows(settings)] == ["voided"] and stripe.meter_events() == []


def flag_for_reconciliation(settings, row_id) -> None:
    """The row as the reporter leaves one whose sends went unanswered for a day."""
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).where(_logs.id == row_id).values(
            status="failed", needs_reconciliation=True, stripe_first_sent_at=sa.func.now() - dt.timedelta(hours=30),
        ))


def settle_void(settings, row_id, *, stripe_bills: bool, reason=None) -> models.UsageVoid:
    with db.transaction(settings.database_url) as session:
        void = usage_voids.settled(session, row_id, stripe_bills, "reconcile 10:00-10:01: 1 row missing", "operator:ann", reason)
        session.expunge(void)
    return void


def test_a_row_stripe_may_hold_is_refused_until_an_operator_settles_it_as_billed(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter)
    flag_for_reconciliation(settings, event.id)  # as if its answer was lost, a day ago
    with pytest.raises(usage_voids.VoidRefused, match="usage void-settled"):
        ask_void(settings, event.id)

    settled = settle_void(settings, event.id, stripe_bills=True, reason="wrong organization")
    assert (settled.method, settled.state, settled.settled_by) == ("stripe_negative_event", "pending", "operator:ann")
    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    void = void_of(settings, event.id)
    assert (void.state, void.reason, void.settled_note) == ("completed", "wrong organization", "reconcile 10:00-10:01: 1 row missing")
    assert [row.status for row in log_rows(settings)] == ["voided"]
    settle(stripe)
    assert sorted(e["identifier"] for e in stripe.meter_events()) == sorted([str(event.id), f"void-{event.id}"])


def test_a_void_settled_as_billing_nothing_completes_without_a_stripe_call(settings, world, broker, meter, stripe):
    event = world.event()
    record(settings, [event])
    flag_for_reconciliation(settings, event.id)

    void = settle_void(settings, event.id, stripe_bills=False, reason="test call")
    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    assert (void.method, void.state) == ("never_sent", "completed")
    assert [row.status for row in log_rows(settings)] == ["voided"]
    assert stripe.meter_events() == [] and adjustments(stripe) == []
    with pytest.raises(usage_voids.VoidRefused, match="completed"):
        settle_void(settings, event.id, stripe_bills=True)  # a complete void is never settled again


def test_a_failed_cancel_stripe_no_longer_finds_is_settled_and_then_negated(settings, world, broker, stripe):
    """A cancel that found nothing a day after the row's send fails for reconciliation; the
    operator saw Stripe still counts the row, so a negative event takes it back."""
    meter = StripeMeter(settings, api="v1")
    event = reported_event(settings, world, broker, meter)
    ask_void(settings, event.id)
    stripe.advance_clock(dt.timedelta(hours=25).total_seconds())  # past Stripe's 24 h to cancel
    first_sent_ago(settings, event.id, dt.timedelta(hours=25))
    shard = reporting.shard_of(world.organization.id)
    with db.transaction(settings.database_url) as session:  # asked before the day ran out, sent after
        session.execute(sa.update(models.UsageVoid).values(stripe_first_sent_at=sa.func.now()))

    report(settings, broker, meter, shard)
    failed = void_of(settings, event.id)
    assert failed.state == "failed" and "usage void-settled" in failed.error

    settle_void(settings, event.id, stripe_bills=True)
    report(settings, broker, meter, shard)
    assert void_of(settings, event.id).state == "completed"
    settle(stripe)
    values = sorted(e["value"] for e in stripe.meter_events() if e["canceled_at"] is None)
    assert values == sorted([str(log_rows(settings)[0].stripe_value), str(-log_rows(settings)[0].stripe_value)])


def test_a_negative_event_without_a_stripe_customer_fails_unsent(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter)
    first_sent_ago(settings, event.id, dt.timedelta(hours=30))
    assert ask_void(settings, event.id).method == "stripe_negative_event"
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(models.Organization).values(stripe_customer_id=None))

    report(settings, broker, meter, reporting.shard_of(world.organization.id))

    void = void_of(settings, event.id)
    assert void.state == "failed" and "no Stripe customer" in void.error
    assert (void.stripe_first_sent_at, void.stripe_attempts) == (None, 0)  # nothing went out
    assert [e["identifier"] for e in stripe.meter_events()] == [str(event.id)]


def test_a_reported_row_of_unknown_send_time_is_negated_not_cancelled(settings, world, broker, meter, stripe):
    """Rows reported before first sends were kept: a cancel might come after Stripe's 24 h."""
    event = reported_event(settings, world, broker, meter)
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).values(stripe_first_sent_at=None, stripe_reported_at=None))

    assert ask_void(settings, event.id).method == "stripe_negative_event"


def test_a_negative_event_stripe_drops_fails_its_void_and_asking_again_sends_it_afresh(settings, world, broker, meter, stripe):
    event = reported_event(settings, world, broker, meter)
    first_sent_ago(settings, event.id, dt.timedelta(hours=30))
    ask_void(settings, event.id)
    shard = reporting.shard_of(world.organization.id)
    report(settings, broker, meter, shard)
    sent = void_of(settings, event.id)
    assert (sent.state, sent.stripe_request_key) == ("completed", f"agent700-void-{event.id}-1")

    dropped_report = stripe_error_reports.ErrorReport(
        event_id="evt_void_dropped", type="v1.billing.meter.error_report_triggered", meter_id="mtr_test",
        start=sent.stripe_first_sent_at, end=sent.stripe_first_sent_at + dt.timedelta(minutes=1), summary="dropped",
        error_types=[stripe_error_reports.ErrorType("meter_event_customer_not_found", 1, {sent.stripe_request_key: "No such customer"})],
    )
    with db.transaction(settings.database_url) as session:
        reasons = stripe_error_reports.dropped_voids(session, dropped_report)
        assert stripe_error_reports.dropped_rows(session, None, dropped_report, dt.timedelta(0), len(reasons)) == {}
        assert usage_voids.dropped(session, reasons) == [event.id]

    failed = void_of(settings, event.id)
    assert (failed.state, failed.completed_at, failed.stripe_first_sent_at) == ("failed", None, None)
    assert "No such customer" in failed.error and "evt_void_dropped" in failed.error
    assert [row.status for row in log_rows(settings)] == ["reported"]  # Stripe bills it again

    assert ask_void(settings, event.id).state == "pending"  # asked again: armed
    # The local server did not really drop it (it validates v1 events at once): past its
    # identifier window, it takes the resend as Stripe takes one of an event it dropped.
    stripe.advance_clock(dt.timedelta(hours=25).total_seconds())
    report(settings, broker, meter, shard)
    again = void_of(settings, event.id)
    assert again.error is None, again.error
    assert (again.state, again.stripe_request_key, again.stripe_identifier) == (
        "completed", f"agent700-void-{event.id}-2", f"void-{event.id}",
    )
    assert [row.status for row in log_rows(settings)] == ["voided"]
