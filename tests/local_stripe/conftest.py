"""The local Stripe server's fixtures, for tests that drive it through the real ``stripe`` SDK
(``tests.support.stripe_sdk``): ``stripe``, the server reset per test; ``client``;
``account``, the server set up as the billing service expects Stripe to be (a sum meter
for ``EVENT_NAME`` and the customers ``CUSTOMERS``); ``streamer``, a v2 stream client.
"""

from __future__ import annotations

import pytest
import stripe as stripe_sdk

from tests.support.stripe_sdk import CUSTOMERS, EVENT_NAME, open_session, sdk_client


@pytest.fixture
def stripe(stripe_server):
    """The server as a new Stripe account: nothing in it, its clock at real time, Stripe's
    hard edges on (summary lag, report windows, one v1 call per customer, idempotency as
    stored), and Stripe's way of judging v2 events a while after they arrive (the other
    suites' server judges them at once). ``settle`` moves its clock on to what Stripe
    shows later."""
    from local_stripe.faults import DEFAULT_VALIDATION_DELAY_SECONDS

    stripe_server.reset()
    stripe_server.set_validation_delay(DEFAULT_VALIDATION_DELAY_SECONDS)
    yield stripe_server
    stripe_server.reset()












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
