"""The real ``stripe`` SDK (imported as ``stripe_sdk``) against the local Stripe server, as its
tests drive it: a client (``sdk_client``), a v2 meter event session (``open_session``),
meter event bodies for ``EVENT_NAME`` (``v1_event``, ``v2_event``), and the server's clock
moved on to what Stripe would show later (``settle``, ``at_report_window_start``)."""

from __future__ import annotations

import datetime as dt
import uuid

import stripe as stripe_sdk

API_KEY = "sk_test_local_stripe_tests"


EVENT_NAME = "agent700_cost"


CUSTOMERS = ("cus_a", "cus_b")


def sdk_client(server, api_key: str = API_KEY, **options) -> stripe_sdk.StripeClient:
    options.setdefault("max_network_retries", 0)
    return stripe_sdk.StripeClient(api_key, base_addresses={"api": server.url, "meter_events": server.url}, **options)


def rfc3339_millis(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def v1_event(customer: str = "cus_a", value: str = "1", **fields) -> dict:
    return {
        "event_name": EVENT_NAME,
        "payload": {"stripe_customer_id": customer, "value": value},
        "identifier": f"id-{uuid.uuid4()}",
        **fields,
    }


def v2_event(customer: str = "cus_a", value: str = "1", **fields) -> dict:
    return {**v1_event(customer, value), "timestamp": rfc3339_millis(dt.datetime.now(dt.UTC)), **fields}


def open_session(server, client: stripe_sdk.StripeClient):
    """(a client authenticated by a new session's token, the session), as Stripe's docs do it."""
    session = client.v2.billing.meter_event_session.create()
    return sdk_client(server, api_key=session.authentication_token), session


def settle(server) -> None:
    """What Stripe shows once it has caught up: every pending v2 event judged, then the
    clock moved past the error report windows and the summary lag, so every report is
    emitted and every valid event summarized."""
    server.validate_now()
    settings = server.faults()
    server.advance_clock(max(settings["report_window_seconds"], settings["summary_lag_seconds"]))


def at_report_window_start(server) -> float:
    """Move the clock to just after the start of the next error report window, so that
    what a test sends next falls in one window; the window's start."""
    window = server.faults()["report_window_seconds"]
    start = (server.now() // window + 1) * window
    server.advance_clock(start - server.now() + 0.001)
    return start



