"""Stripe's asynchronous failures, end to end: the v2 stream takes events and the local
Stripe server (like Stripe) drops the invalid ones later, reporting them to the service's
webhook; the real worker finds the rows and marks them failed with Stripe's reason.
Nothing is left ``reported`` that Stripe does not count."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
import uuid

import pytest
import redis
import requests
import sqlalchemy as sa
import stripe as stripe_sdk
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.serving import make_server

from devtools.children import wait_until
from ingest_api import create_app
from local_stripe.events import Problem
from local_stripe.state import MeterEvent
from local_stripe.validator import error_reports
from shared import db, models, pipeline_status, queue, usage_rows
from shared.stripe_client import DEFAULT_NETWORK_RETRIES as SDK_NETWORK_RETRIES
from shared.stripe_client import stripe_client
from tests.support.billing import build_world_with_every_price, log_rows, status_counts
from tests.support.expected_bills import Load
from worker import recording, reporting, stripe_error_reports, tasks
from worker.stripe_reporting import StripeMeter

WEBHOOK_SECRET = "whsec_test_error_reports"
SETTLE_SECONDS = 30
_logs = models.UserBillableRequestLog


@pytest.fixture
def webhook_settings(settings):
    return settings.replace(stripe_webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def web(committed_database, webhook_settings, stripe):
    """The web app served over HTTP (Stripe's event destination), and its test client."""
    app = create_app(webhook_settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    stripe.set_webhook(f"{url}/api/stripe/events", WEBHOOK_SECRET)
    stripe.set_validation_delay(0.3)  # like Stripe: judged after the call has answered
    # Stripe picks its report windows; short ones here, so a report comes within the tests' wait.
    stripe.set_faults(report_window_seconds=2)
    yield app.test_client(), url
    server.shutdown()
    thread.join()


def settled(settings) -> bool:
    counts = status_counts(settings)
    return counts.get("recorded", 0) == 0 and sum(counts.values()) > 0


def assert_nothing_reported_that_stripe_lacks(settings, stripe) -> None:
    stripe.validate_now()
    at_stripe = {item["identifier"] for item in stripe.meter_events()}
    for row in log_rows(settings):
        if row.status == "reported":
            assert str(row.id) in at_stripe, f"{row.id} is reported but Stripe dropped it"


def test_an_unknown_customer_fails_only_its_events_with_stripes_reason(webhook_settings, factory, stripe, web, start_worker):
    """One stream call carries good events and events for a customer Stripe does not know;
    the good ones stay reported, the others end failed within seconds."""
    settings = webhook_settings
    client, _ = web
    world = build_world_with_every_price(factory, organizations=1)
    ghost = factory.organization(stripe_customer_id=None)
    with db.transaction(settings.database_url) as session:  # an id Stripe never had (set behind the CLI's back)
        session.execute(sa.update(models.Organization).where(models.Organization.id == ghost.id).values(stripe_customer_id="cus_ghost"))
    factory.membership(world.user, ghost, "member")
    world.organizations.append(ghost)
    # Stripe reports per window of its choosing; a short one keeps this within its settle time.
    stripe.set_faults(report_window_seconds=2)
    start_worker(settings)

    ids = Load(world, seed=11).post(client, 60)

    wait_until(lambda: settled(settings) and all(
        row.status == "failed" for row in log_rows(settings) if row.organization_id == ghost.id
    ), SETTLE_SECONDS, message=lambda: str(status_counts(settings)))
    rows = {row.id: row for row in log_rows(settings)}
    assert set(rows) == set(ids)
    for row in rows.values():
        if row.organization_id == ghost.id:
            assert row.status == "failed"
            assert "Stripe dropped this meter event" in row.error and "meter_event_customer_not_found" in row.error
        else:
            assert (row.status, row.error) == ("reported", None)
    assert_nothing_reported_that_stripe_lacks(settings, stripe)
    # One report per window the events were received in.
    assert {event["type"] for event in stripe.core_events()} == {"v1.billing.meter.error_report_triggered"}


def test_a_meter_deactivated_after_the_reporter_looked_fails_what_stripe_dropped(webhook_settings, factory, stripe, web, start_worker):
    settings = webhook_settings
    client, _ = web
    world = build_world_with_every_price(factory, organizations=1)
    # One pool process: the one that reported the first rows is the one that still trusts
    # the meter it found. With two, the other may look for the first time after the
    # deactivation, rightly send nothing, and leave the rows recorded instead.
    start_worker(settings, concurrency=1)
    load = Load(world, seed=3)
    first = load.post(client, 5)
    # At Stripe and marked reported here, in an earlier second than the deactivation:
    # Stripe gives the deactivation's time in whole seconds, and a row marked reported in
    # that second or later is taken for dropped (the safe side: a retry of a row Stripe
    # has is deduplicated by its identifier; a dropped row kept as reported would not be).
    wait_until(
        lambda: len(stripe.meter_events()) == 5 and status_counts(settings) == {"reported": 5}, SETTLE_SECONDS,
        message=lambda: str(status_counts(settings)),
    )
    time.sleep(1.1)
    (meter,) = [m for m in stripe.state.store.meters(None)]
    sdk = stripe_sdk.StripeClient("sk_test_x", base_addresses={"api": stripe.url})
    sdk.v1.billing.meters.deactivate(meter["id"])  # the reporter still trusts what it found a moment ago

    later = load.post(client, 5)

    wait_until(lambda: status_counts(settings).get("failed") == 5, SETTLE_SECONDS, message=lambda: str(status_counts(settings)))
    rows = {row.id: row for row in log_rows(settings)}
    assert {rows[i].status for i in first} == {"reported"}
    for event_id in later:
        assert rows[event_id].status == "failed" and "archived_meter" in rows[event_id].error
    assert_nothing_reported_that_stripe_lacks(settings, stripe)


def test_without_a_meter_nothing_is_sent_and_the_reason_shows(settings, world, stripe, client, caplog):
    stripe.reset()  # a Stripe account where nobody ran `stripe ensure-meter`
    stripe.create_customers(world.organization.stripe_customer_id)
    event = world.event()
    with db.transaction(settings.database_url) as session:
        recording.write_rows(session, [event], value_decimals=6)
    broker = redis.Redis.from_url(settings.broker_url, decode_responses=True)

    done = reporting.report_round(
        lambda: db.transaction(settings.database_url), broker, StripeMeter(settings), reporting.shard_of(world.organization.id)
    )

    assert done.reported == [] and "no billing meter" in done.refused and done.retry_in
    (row,) = log_rows(settings)
    assert row.status == "recorded" and "no billing meter" in row.error
    assert stripe.meter_events() == stripe.meter_events("pending") == stripe.meter_events("invalid") == []
    assert pipeline_status.meter_problem(broker) == (True, done.refused)
    broker.close()
    # What an operator sees: the gauge at 0 (A700StripeMeterNotReady) and the reason logged.
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "a700_stripe_meter_ready 0.0" in metrics.splitlines()
    assert any("no billing meter" in record.getMessage() for record in caplog.records if record.levelname == "WARNING")


def test_an_event_older_than_stripes_window_is_failed_at_once_and_never_sent(webhook_settings, factory, stripe, web, start_worker):
    """Accepted 35 days ago and stuck since (a long outage): Stripe would drop it."""
    settings = webhook_settings
    world = build_world_with_every_price(factory, organizations=1)
    old = world.event(occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=35, minutes=1))
    with db.transaction(settings.database_url) as session:
        recording.write_rows(session, [old], value_decimals=6)
    start_worker(settings)  # its start-up sweep wakes the reporter of the waiting row

    wait_until(lambda: status_counts(settings).get("failed") == 1, SETTLE_SECONDS, message=lambda: str(status_counts(settings)))
    (row,) = log_rows(settings)
    assert row.error.startswith("Too old for Stripe") and "not sent" in row.error
    stripe.validate_now()
    assert stripe.meter_events() == stripe.meter_events("invalid") == []


def _signed(payload: dict, secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = stripe_sdk.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", secret)
    return body, f"t={timestamp},v1={signature}"


def _thin_event(event_id: str = "evt_test_forged") -> dict:
    return {
        "id": event_id, "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",
        "created": "2026-11-29T00:00:00.000Z", "livemode": False, "context": None, "reason": None,
        "related_object": {"id": "mtr_x", "type": "billing.meter", "url": "/v1/billing/meters/mtr_x"},
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: _signed(_thin_event(), "whsec_someone_else"),
        lambda: (_signed(_thin_event(), WEBHOOK_SECRET)[0], "t=1,v1=deadbeef"),
        lambda: _signed(_thin_event(), WEBHOOK_SECRET, timestamp=int(time.time()) - 3600),  # a replay an hour late
        lambda: (b"not json at all", _signed(_thin_event(), WEBHOOK_SECRET)[1]),
        lambda: (_signed(_thin_event(), WEBHOOK_SECRET)[0], None),
    ],
    ids=["other-secret", "bad-signature", "old-replay", "not-json", "no-signature"],
)
def test_a_forged_or_stale_webhook_is_400_and_changes_nothing(webhook_settings, web, make):
    client, _ = web
    body, signature = make()
    headers = {"Content-Type": "application/json"} | ({"Stripe-Signature": signature} if signature else {})

    response = client.post("/api/stripe/events", data=body, headers=headers)

    assert response.status_code == 400, response.get_json()
    assert set(response.get_json()) == {"error"}
    with db.transaction(webhook_settings.database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(models.StripeEvent)) == 0


def test_a_webhook_delivered_twice_is_handled_once(webhook_settings, factory, stripe, web, broker):
    client, url = web
    world = build_world_with_every_price(factory, organizations=1)
    body, signature = _signed(_thin_event("evt_test_twice"), WEBHOOK_SECRET)

    first = requests.post(f"{url}/api/stripe/events", data=body, headers={"Stripe-Signature": signature}, timeout=10)
    again = requests.post(f"{url}/api/stripe/events", data=body, headers={"Stripe-Signature": signature}, timeout=10)

    assert (first.status_code, again.status_code) == (200, 200)
    with db.transaction(webhook_settings.database_url) as session:
        assert session.scalars(sa.select(models.StripeEvent.id)).all() == ["evt_test_twice"]
    sent = [json.loads(raw) for raw in broker.lrange(queue.QUEUE, 0, -1)]
    assert [message["headers"]["task"] for message in sent].count(queue.STRIPE_EVENT) == 1
    assert world  # the webhook needs no caller: Stripe signs it


# --- the event's task chain: it always ends, and there is one per event ---------------------------

CALLS_PER_FETCH = 1 + SDK_NETWORK_RETRIES  # the SDK retries a 429 or 5xx itself


def _deliver(client, event_id: str) -> None:
    body, signature = _signed(_thin_event(event_id), WEBHOOK_SECRET)
    response = client.post("/api/stripe/events", data=body, headers={"Stripe-Signature": signature})
    assert response.status_code == 200, response.get_json()


def _received_a_minute_ago(settings, event_id: str) -> None:
    """So that every sweep from now on takes the event for one whose task was lost."""
    with db.transaction(settings.database_url) as session:
        session.execute(
            sa.update(models.StripeEvent).where(models.StripeEvent.id == event_id)
            .values(received_at=sa.func.now() - dt.timedelta(minutes=1))
        )


def _stripe_event(settings, event_id: str) -> models.StripeEvent | None:
    with db.transaction(settings.database_url) as session:
        return session.get(models.StripeEvent, event_id)


def _handled(settings, event_id: str) -> models.StripeEvent | None:
    row = _stripe_event(settings, event_id)
    return row if row is not None and row.handled_at is not None else None


def _fetches(stripe, event_id: str) -> list[dict]:
    return stripe.calls(f"/v2/core/events/{event_id}")


def _worker_counter(directory, name: str, **labels: str) -> float:
    """A counter's value as the worker's processes wrote it into ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value(f"{name}_total", labels) or 0.0


def _warnings(worker, message: str) -> list[dict]:
    lines = [line for line in worker.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [r for r in map(json.loads, lines) if r.get("level") == "WARNING" and r.get("message") == message]


def _swept_after(broker, moment: float) -> bool:
    last = broker.get(pipeline_status.SWEEP_KEY)
    return last is not None and float(last) > moment


def test_a_webhook_for_an_event_stripe_does_not_have_ends_after_one_fetch(webhook_settings, stripe, web, broker, start_worker, tmp_path):
    """Stripe answers 404 (an expired event, another account's, another mode's): the
    event ends at once, unhandled, with the reason on its row, a WARNING and the metric;
    no sweep fetches it again (before: every 30 s, and one more chain each 15 s sweep)."""
    settings = webhook_settings
    client, _ = web
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    worker = start_worker(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))

    _deliver(client, "evt_test_unknown")
    _received_a_minute_ago(settings, "evt_test_unknown")

    row = wait_until(lambda: _handled(settings, "evt_test_unknown"), SETTLE_SECONDS, message=worker.log_tail)
    assert row.outcome.startswith("not handled: Stripe answered 404") and "No such event" in row.outcome
    ended = time.time()
    wait_until(lambda: _swept_after(broker, ended), SETTLE_SECONDS, message=worker.log_tail)  # a sweep saw it
    assert [call["status"] for call in _fetches(stripe, "evt_test_unknown")] == [404]
    assert _stripe_event(settings, "evt_test_unknown").outcome == row.outcome
    (warning,) = _warnings(worker, "stripe event not handled")
    assert (warning["stripe_event_id"], warning["reason"]) == ("evt_test_unknown", "refused")
    assert _worker_counter(metrics_dir, "a700_stripe_events_unhandled", reason="refused") == 1
    assert _worker_counter(metrics_dir, "a700_stripe_event_fetches", result="refused") == 1


def _an_error_report_at_stripe(stripe) -> str:
    """An error report Stripe made (no meter for one event, in a window with no rows of
    ours), as its validator makes them; the event id."""
    now = time.time()
    dropped = MeterEvent("row-elsewhere", "agent700_cost", {}, int(now), "v2", int(now), now)
    (report,) = error_reports([(dropped, Problem("no_meter", "No active meter was found.", ("event_name",)), None)], (now - 60, now))
    stripe.state.store.add_core_event(report)
    return report["id"]


def test_a_fetch_that_fails_for_now_backs_off_then_succeeds(webhook_settings, stripe, web, start_worker):
    settings = webhook_settings
    client, _ = web
    event_id = _an_error_report_at_stripe(stripe)
    worker = start_worker(settings)
    stripe.set_faults(fail_next=2 * CALLS_PER_FETCH, status=503)  # two fetches fail, the SDK's retries included

    _deliver(client, event_id)

    row = wait_until(lambda: _handled(settings, event_id), SETTLE_SECONDS, message=worker.log_tail)
    assert row.outcome == "0 row(s) failed of 1 error(s) reported"
    calls = _fetches(stripe, event_id)
    assert [call["status"] for call in calls] == [503] * 2 * CALLS_PER_FETCH + [200]
    # The task's own retries wait 2 s, then 4 s (each at least half of it, with jitter).
    first_wait = calls[CALLS_PER_FETCH]["at"] - calls[CALLS_PER_FETCH - 1]["at"]
    second_wait = calls[2 * CALLS_PER_FETCH]["at"] - calls[2 * CALLS_PER_FETCH - 1]["at"]
    assert 1.0 <= first_wait < 10 and 2.0 <= second_wait < 10, (first_wait, second_wait)


def test_a_sweep_while_the_events_chain_is_live_starts_no_second_one(webhook_settings, stripe, web, broker, start_worker):
    """Stripe fails every call for now: the one chain backs off; the sweep, which sees the
    event received long ago and unhandled, leaves it to that chain."""
    settings = webhook_settings
    client, _ = web
    event_id = _an_error_report_at_stripe(stripe)
    worker = start_worker(settings)
    stripe.set_faults(fail_next=10_000, status=503)
    _deliver(client, event_id)
    wait_until(lambda: len(_fetches(stripe, event_id)) >= CALLS_PER_FETCH, SETTLE_SECONDS, message=worker.log_tail)
    _received_a_minute_ago(settings, event_id)

    swept = tasks.sweep.apply().get()

    assert swept["stripe_events_resent"] == []
    stripe.set_faults(fail_next=0)  # the outage is over: the one chain's next fetch succeeds
    wait_until(lambda: _handled(settings, event_id), SETTLE_SECONDS, message=worker.log_tail)
    time.sleep(3)  # a second chain, had one been started, would fetch within its first backoff
    assert [call["status"] for call in _fetches(stripe, event_id)].count(200) == 1


def test_an_event_not_fetched_within_a_day_ends_unhandled_with_a_warning(webhook_settings, stripe, web, start_worker, tmp_path):
    settings = webhook_settings
    client, _ = web
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    worker = start_worker(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    stripe.set_faults(fail_next=10_000, status=429)
    _deliver(client, "evt_test_outage")
    with db.transaction(settings.database_url) as session:  # delivered a day ago, Stripe failing since
        session.execute(
            sa.update(models.StripeEvent).where(models.StripeEvent.id == "evt_test_outage")
            .values(received_at=sa.func.now() - dt.timedelta(hours=24))
        )

    row = wait_until(lambda: _handled(settings, "evt_test_outage"), SETTLE_SECONDS, message=worker.log_tail)

    assert row.outcome.startswith("not handled: still not fetched after 1 day") and "429" in row.outcome
    assert len(_fetches(stripe, "evt_test_outage")) <= 2 * CALLS_PER_FETCH
    (warning,) = _warnings(worker, "stripe event not handled")
    assert warning["reason"] == "expired"
    assert _worker_counter(metrics_dir, "a700_stripe_events_unhandled", reason="expired") == 1


def test_without_a_webhook_secret_every_delivery_is_refused(settings, client):
    body, signature = _signed(_thin_event(), WEBHOOK_SECRET)

    response = client.post("/api/stripe/events", data=body, headers={"Stripe-Signature": signature})

    assert response.status_code == 503 and response.headers["Retry-After"]


# --- which rows a report names (findings of Stripe's wire format and timing) ---------------


def _reported_in_calls(settings, world, calls: list[tuple[int, usage_rows.StripeCall]]) -> list[list[uuid.UUID]]:
    """Rows recorded and reported, ``count`` of them in each given call; their ids per call."""
    ids_per_call = []
    for count, call in calls:
        events = [world.event() for _ in range(count)]
        with db.transaction(settings.database_url) as session:
            recording.write_rows(session, events, value_decimals=6)
            usage_rows.mark_reported(session, {event.id: call for event in events})
        ids_per_call.append([event.id for event in events])
    return ids_per_call


def _report(
    start: dt.datetime, *, code: str, count: int, samples: dict[str, str] | None = None,
    type_: str = "v1.billing.meter.error_report_triggered", meter_id: str | None = "mtr_test",
) -> stripe_error_reports.ErrorReport:
    return stripe_error_reports.ErrorReport(
        event_id="evt_test_report", type=type_, meter_id=meter_id, start=start, end=start + dt.timedelta(minutes=1),
        summary="Stripe dropped events.", error_types=[stripe_error_reports.ErrorType(code, count, samples or {})],
    )


def _dropped(settings, report, settled_after=dt.timedelta(0)) -> set[uuid.UUID]:
    with db.transaction(settings.database_url) as session:
        return set(stripe_error_reports.dropped_rows(session, stripe_client(settings), report, settled_after))


NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now():
    """NOW is each test's own start: a time taken at import is minutes old by the time a
    test runs, and rows "sent" then would break Stripe's timestamp rules."""
    global NOW
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


LONG = dt.timedelta(hours=1)  # summaries not settled for the whole test


def _call(key: str, event_name: str = "agent700_cost", at: dt.datetime | None = None) -> usage_rows.StripeCall:
    return usage_rows.StripeCall(at or NOW, key, event_name)


def test_a_sample_naming_a_request_of_one_event_drops_that_row_without_the_summaries(settings, world, stripe):
    """Stripe documents a sample's request.identifier as the request's idempotency key."""
    (alone,), others = _reported_in_calls(settings, world, [(1, _call("agent700-meter-one")), (3, _call("agent700-meter-batch-b"))])
    report = _report(NOW, code="meter_event_invalid_value", count=1, samples={"agent700-meter-one": "Invalid value."})

    assert _dropped(settings, report, settled_after=LONG) == {alone}


def test_a_sample_naming_the_event_identifier_drops_that_row_too(settings, world, stripe):
    (ids,) = _reported_in_calls(settings, world, [(3, _call("agent700-meter-batch-c"))])
    report = _report(NOW, code="meter_event_invalid_value", count=1, samples={str(ids[1]): "Invalid value."})

    assert _dropped(settings, report, settled_after=LONG) == {ids[1]}


def test_a_sample_names_a_request_sent_outside_the_window_too(settings, world, stripe):
    """A clock far off, or a slow call: the request key still finds its row."""
    (ids,) = _reported_in_calls(settings, world, [(1, _call("agent700-meter-early", at=NOW - dt.timedelta(minutes=10)))])
    report = _report(NOW, code="meter_event_invalid_value", count=1, samples={"agent700-meter-early": "Invalid value."})

    assert _dropped(settings, report, settled_after=LONG) == set(ids)


def test_a_sample_naming_a_request_of_many_leaves_the_choice_to_the_rules(settings, world, factory, stripe):
    """Which event of a batch the sample means is not said: the customer rule decides."""
    (ids,) = _reported_in_calls(settings, world, [(3, _call("agent700-meter-batch-d"))])
    ghost = factory.organization(stripe_customer_id=None)
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(models.Organization).where(models.Organization.id == ghost.id).values(stripe_customer_id="cus_ghost"))
        session.execute(sa.update(_logs).where(_logs.id == ids[0]).values(organization_id=ghost.id))
    report = _report(NOW, code="meter_event_customer_not_found", count=1, samples={"agent700-meter-batch-d": "No such customer."})

    assert _dropped(settings, report, settled_after=LONG) == {ids[0]}


def test_no_meter_found_drops_only_the_rows_of_its_event_name(settings, world, stripe):
    stripe.create_meter("retired_name")  # created since: only the sample tells which rows
    ours, others = _reported_in_calls(
        settings, world, [(2, _call("agent700-meter-batch-e")), (2, _call("agent700-meter-batch-f", event_name="retired_name"))]
    )
    report = _report(
        NOW, code="no_meter", count=2, type_=stripe_error_reports.stripe_meter.NO_METER_FOUND, meter_id=None,
        samples={"agent700-meter-batch-f": "No meter was found matching event_name retired_name."},
    )

    assert _dropped(settings, report) == set(others)


def test_no_meter_found_without_samples_drops_the_event_names_that_have_no_meter(settings, world, stripe):
    ours, others = _reported_in_calls(
        settings, world, [(2, _call("agent700-meter-batch-g")), (2, _call("agent700-meter-batch-h", event_name="never_metered"))]
    )
    report = _report(NOW, code="no_meter", count=2, type_=stripe_error_reports.stripe_meter.NO_METER_FOUND, meter_id=None)

    assert _dropped(settings, report) == set(others)


def test_rows_are_in_a_window_by_the_start_of_their_own_call(settings, world, stripe):
    """A slow round: its first call started in the window, the round ended minutes later."""
    early, late = _reported_in_calls(
        settings, world, [(1, _call("k-early", at=NOW)), (1, _call("k-late", at=NOW + dt.timedelta(minutes=3)))]
    )
    with db.transaction(settings.database_url) as session:
        customer = session.get(models.Organization, world.organization.id).stripe_customer_id
    stripe_client(settings).v1.customers.delete(customer)  # unknown to Stripe now: the rule would drop both
    report = _report(NOW, code="meter_event_customer_not_found", count=1)

    assert _dropped(settings, report, settled_after=LONG) == set(early)


def test_a_report_the_samples_and_rules_cannot_explain_waits_for_settled_summaries(settings, world, stripe):
    _reported_in_calls(settings, world, [(2, _call("agent700-meter-batch-i"))])
    report = _report(NOW, code="meter_event_customer_not_found", count=1)  # the customer exists (now)
    meter_id = stripe.state.store.meters(None)[0]["id"]
    report = dataclasses.replace(report, meter_id=meter_id)

    with pytest.raises(stripe_error_reports.SummariesNotSettled) as waiting:
        _dropped(settings, report, settled_after=LONG)

    assert waiting.value.settles_at == report.end + LONG
