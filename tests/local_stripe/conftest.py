"""Shared helpers for the local Stripe server's tests, which drive it through the real
``stripe`` SDK (imported as ``stripe_sdk``; ``stripe`` is the server fixture, reset per test).

``account`` sets the server up as the billing service expects Stripe to be: a sum meter
for ``EVENT_NAME`` and the customers ``CUSTOMERS``.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import stripe as stripe_sdk

API_KEY = "sk_test_local_stripe_tests"
EVENT_NAME = "agent700_cost"
CUSTOMERS = ("cus_a", "cus_b")


@pytest.fixture
def stripe(stripe_server):
    """The server as a new Stripe account: nothing in it, and Stripe's way of judging v2
    events a while after they arrive (the other suites' server judges them at once)."""
    from local_stripe.faults import DEFAULT_VALIDATION_DELAY_SECONDS

    stripe_server.reset()
    stripe_server.set_validation_delay(DEFAULT_VALIDATION_DELAY_SECONDS)
    yield stripe_server
    stripe_server.reset()


def sdk_client(server, api_key: str = API_KEY, **options) -> stripe_sdk.StripeClient:
    options.setdefault("max_network_retries", 0)
    return stripe_sdk.StripeClient(api_key, base_addresses={"api": server.url, "meter_events": server.url}, **options)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def v1_event(customer: str = "cus_a", value: str = "1.5", **fields) -> dict:
    return {
        "event_name": EVENT_NAME,
        "payload": {"stripe_customer_id": customer, "value": value},
        "identifier": f"id-{uuid.uuid4()}",
        **fields,
    }


def v2_event(customer: str = "cus_a", value: str = "1", **fields) -> dict:
    return {**v1_event(customer, value), "timestamp": rfc3339(dt.datetime.now(dt.UTC)), **fields}


def open_session(server, client: stripe_sdk.StripeClient):
    """(a client authenticated by a new session's token, the session), as Stripe's docs do it."""
    session = client.v2.billing.meter_event_session.create()
    return sdk_client(server, api_key=session.authentication_token), session


@pytest.fixture
def client(stripe) -> stripe_sdk.StripeClient:
    return sdk_client(stripe)


@pytest.fixture
def account(stripe) -> dict:
    """The meter for EVENT_NAME (returned) and the customers CUSTOMERS."""
    stripe.create_customers(*CUSTOMERS)
    return stripe.create_meter(EVENT_NAME)


@pytest.fixture
def streamer(stripe, client) -> stripe_sdk.StripeClient:
    """A client for the v2 meter event stream, authenticated by a session token."""
    return open_session(stripe, client)[0]
