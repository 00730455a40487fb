"""Stripe's asynchronous failures, end to end: the v2 stream takes events and the local
Stripe server (like Stripe) drops the invalid ones later, reporting them to the service's
webhook; the real worker finds the rows and marks them failed with Stripe's reason.
Nothing is left ``reported`` that Stripe does not count."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
import redis
import requests
import sqlalchemy as sa
import stripe as stripe_sdk
from werkzeug.serving import make_server

from ingest_api import create_app
from shared import db, models, pipeline_status, queue
from tests.pipeline.conftest import Load, make_world
from tests.support.billing import log_rows, status_counts
from tests.support.children import wait_until
from worker import recording, reporting
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
    world = make_world(factory, organizations=1)
    ghost = factory.organization(stripe_customer_id=None)
    with db.transaction(settings.database_url) as session:  # an id Stripe never had (set behind the CLI's back)
        session.execute(sa.update(models.Organization).where(models.Organization.id == ghost.id).values(stripe_customer_id="cus_ghost"))
    factory.membership(world.user, ghost, "member")
    world.organizations.append(ghost)
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
    (event,) = stripe.core_events()
    assert event["type"] == "v1.billing.meter.error_report_triggered"


def test_a_meter_deactivated_after_the_reporter_looked_fails_what_stripe_dropped(webhook_settings, factory, stripe, web, start_worker):
    settings = webhook_settings
    client, _ = web
    world = make_world(factory, organizations=1)
    start_worker(settings)
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
        recording.record(session, [event], value_decimals=6)
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
    world = make_world(factory, organizations=1)
    old = world.event(occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=35, minutes=1))
    with db.transaction(settings.database_url) as session:
        recording.record(session, [old], value_decimals=6)
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
    world = make_world(factory, organizations=1)
    body, signature = _signed(_thin_event("evt_test_twice"), WEBHOOK_SECRET)

    first = requests.post(f"{url}/api/stripe/events", data=body, headers={"Stripe-Signature": signature}, timeout=10)
    again = requests.post(f"{url}/api/stripe/events", data=body, headers={"Stripe-Signature": signature}, timeout=10)

    assert (first.status_code, again.status_code) == (200, 200)
    with db.transaction(webhook_settings.database_url) as session:
        assert session.scalars(sa.select(models.StripeEvent.id)).all() == ["evt_test_twice"]
    sent = [json.loads(raw) for raw in broker.lrange(queue.QUEUE, 0, -1)]
    assert [message["headers"]["task"] for message in sent].count(queue.STRIPE_EVENT) == 1
    assert world  # the webhook needs no caller: Stripe signs it


def test_without_a_webhook_secret_every_delivery_is_refused(settings, client):
    body, signature = _signed(_thin_event(), WEBHOOK_SECRET)

    response = client.post("/api/stripe/events", data=body, headers={"Stripe-Signature": signature})

    assert response.status_code == 503 and response.headers["Retry-After"]
