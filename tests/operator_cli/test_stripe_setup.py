"""``stripe ensure-meter``: the billing meter created once, verified after, refused with
what to do when Stripe's meter cannot count the service's events. ``--check`` also says
whether the service can learn of the meter events the v2 stream drops: the webhook secret
set and an enabled event destination sending both error report types as thin events
(refused without them; a key that may not read event destinations is told so)."""

from __future__ import annotations

import json
import threading

import pytest
import stripe as stripe_sdk
from werkzeug.serving import make_server

from ingest_api import create_app
from tests.support.operator_commands import OperatorCliRunner, assert_refused, last_line

WEBHOOK_URL = "https://billing.example/api/stripe/events"
ERROR_REPORT_TYPES = ["v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"]


def sdk(stripe) -> stripe_sdk.StripeClient:
    return stripe_sdk.StripeClient("sk_test_setup", base_addresses={"api": stripe.url})


def test_it_creates_the_meter_the_service_needs_once(runner, stripe):
    stripe.reset()  # a new Stripe account: no meter

    meter_id = last_line(runner.invoke(args=["stripe", "ensure-meter"]))
    again = last_line(runner.invoke(args=["stripe", "ensure-meter"]))

    assert again == meter_id
    (meter,) = sdk(stripe).v1.billing.meters.list().data
    assert (meter.id, meter.event_name, meter.status) == (meter_id, "agent700_cost", "active")
    assert meter.default_aggregation.formula == "sum"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.value_settings.event_payload_key == "value"


def test_check_only_creates_nothing(runner, stripe):
    stripe.reset()

    result = runner.invoke(args=["stripe", "ensure-meter", "--check"])

    assert_refused(result, "Stripe has no billing meter for event name 'agent700_cost'")
    assert sdk(stripe).v1.billing.meters.list().data == []


def test_an_inactive_meter_is_refused_with_what_to_do(runner, stripe):
    (meter,) = sdk(stripe).v1.billing.meters.list().data
    sdk(stripe).v1.billing.meters.deactivate(meter.id)

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), f"meter {meter.id}", "inactive", "reactivate")


def test_a_meter_that_aggregates_otherwise_is_refused(runner, stripe):
    stripe.reset()
    sdk(stripe).v1.billing.meters.create(
        {"display_name": "counts", "event_name": "agent700_cost", "default_aggregation": {"formula": "count"}}
    )

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), "aggregation 'count' (needs 'sum')")


def test_stripe_failing_is_a_clear_error(runner, stripe):
    stripe.set_faults(fail_next=10, status=500)

    assert_refused(runner.invoke(args=["stripe", "ensure-meter"]), "Stripe could not be used")


# --- --check: can the service learn of the meter events Stripe drops? -----------------------


def check(settings, **changes):
    """``stripe ensure-meter --check`` with these settings (the service's as the web has them,
    a webhook secret set, unless changed)."""
    app = create_app(settings.replace(**{"stripe_webhook_secret": "whsec_test_setup"} | changes))
    return OperatorCliRunner(app).invoke(args=["stripe", "ensure-meter", "--check"])


def destination(**fields) -> dict:
    """An event destination as Stripe's v2 API lists it: by default one that sends the
    meters' error reports to the web."""
    return {
        "id": "ed_test_1", "object": "v2.core.event_destination", "name": "billing", "status": "enabled",
        "type": "webhook_endpoint", "event_payload": "thin", "enabled_events": ERROR_REPORT_TYPES,
        "webhook_endpoint": {"signing_secret": None, "url": WEBHOOK_URL}, **fields,
    }


@pytest.fixture
def stripe_answering(stripe):
    """``stripe_answering(status, body)``: the URL of a Stripe that answers
    ``GET /v2/core/event_destinations`` so, and everything else as the local server does."""
    servers = []

    def start(status: str, body: dict) -> str:
        def app(environ, start_response):
            if environ["PATH_INFO"] == "/v2/core/event_destinations":
                start_response(status, [("Content-Type", "application/json")])
                return [json.dumps(body).encode()]
            return stripe.app(environ, start_response)

        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, name="stripe-answering", daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_check_passes_with_the_meter_the_secret_and_an_event_destination(settings, stripe):
    stripe.set_webhook(WEBHOOK_URL)
    (meter,) = sdk(stripe).v1.billing.meters.list().data

    result = check(settings)

    assert last_line(result) == meter.id
    assert "enabled and sends thin v1.billing.meter.error_report_triggered and v1.billing.meter.no_meter_found" in result.stderr
    assert f"events to {WEBHOOK_URL}." in result.stderr


def test_check_without_an_event_destination_says_so_and_fails(settings, stripe):
    result = check(settings)

    assert_refused(result, "No enabled event destination sends the meters' error reports", "/api/stripe/events", exit_code=1)
    assert result.stdout == ""


def test_check_without_the_webhook_secret_fails_naming_it(settings, stripe):
    stripe.set_webhook(WEBHOOK_URL)

    assert_refused(check(settings, stripe_webhook_secret=None), "STRIPE_WEBHOOK_SECRET is not set", exit_code=1)


def test_check_with_v1_needs_no_event_destination(settings, stripe):
    result = check(settings, stripe_meter_api="v1", stripe_webhook_secret=None)

    assert result.exit_code == 0, result.output
    assert "no event destination is needed" in result.stderr


@pytest.mark.parametrize("status", ["401 UNAUTHORIZED", "403 FORBIDDEN"])
def test_a_key_that_may_not_read_event_destinations_is_told_it_cannot_check(settings, stripe_answering, status):
    """A restricted key: the check says what it could not see, and does not crash or refuse."""
    error = {"error": {"type": "invalid_request_error", "message": "The provided key does not have the required permissions"}}
    stripe_url = stripe_answering(status, error)

    result = check(settings, stripe_api_base=stripe_url)

    assert result.exit_code == 0, result.output
    assert f"Could not check the event destination: this API key may not read event destinations (Stripe answered {status[:3]})" in result.stderr


def test_destinations_that_do_not_bring_both_reports_to_the_web_are_named_with_why(settings, stripe_answering):
    listed = [
        destination(id="ed_off", status="disabled"),
        destination(id="ed_snapshot", event_payload="snapshot", enabled_events=ERROR_REPORT_TYPES[:1]),
        destination(id="ed_bridge", type="amazon_eventbridge", webhook_endpoint=None),
    ]
    stripe_url = stripe_answering("200 OK", {"data": listed, "next_page_url": None, "previous_page_url": None})

    assert_refused(
        check(settings, stripe_api_base=stripe_url),
        "No enabled event destination",
        "ed_off: disabled",
        "ed_snapshot: snapshot events, lacks v1.billing.meter.no_meter_found",
        "ed_bridge: type amazon_eventbridge",
        exit_code=1,
    )


def test_a_destination_to_another_path_is_pointed_out(settings, stripe_answering):
    other = destination(webhook_endpoint={"signing_secret": None, "url": "https://billing.example/hooks/stripe"})
    stripe_url = stripe_answering("200 OK", {"data": [other], "next_page_url": None, "previous_page_url": None})

    result = check(settings, stripe_api_base=stripe_url)

    assert result.exit_code == 0, result.output
    assert "to https://billing.example/hooks/stripe; this service takes them at /api/stripe/events." in result.stderr
