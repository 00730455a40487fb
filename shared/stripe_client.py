"""The ``stripe.StripeClient`` both sides use, built from the settings in one place, so the
worker (reporting) and the operator commands (reconciliation) talk to the same Stripe:
``STRIPE_API_BASE`` for the API, ``STRIPE_METER_EVENTS_BASE`` for the v2 meter event stream.
"""

from __future__ import annotations

import stripe

from shared.config import Settings

# Set explicitly (the SDK's default is 0 for StripeClient): connection errors, 409, 5xx and
# anything Stripe marks Stripe-Should-Retry are retried with backoff and jitter, reusing
# the same Idempotency-Key.
DEFAULT_NETWORK_RETRIES = 2
DEFAULT_TIMEOUT_SECONDS = 10


def stripe_client(
    settings: Settings,
    *,
    max_network_retries: int = DEFAULT_NETWORK_RETRIES,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base, "meter_events": settings.stripe_meter_events_base},
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout_seconds),
    )
