"""The Stripe settings as ``load_settings`` reads them: a start outside the local default
run without ``STRIPE_API_KEY`` is refused, as one without ``JWT_SECRET`` is; with a key,
the real Stripe is the default."""

from __future__ import annotations

import pytest

from shared.config import ConfigurationError, load_settings
from tests.support.billing import TEST_JWT_SECRET

PRODUCTION = {
    "DATABASE_URL": "postgresql://db.example/billing",
    "CELERY_BROKER_URL": "redis://redis.example:6379/0",
    "JWT_SECRET": TEST_JWT_SECRET,
}


@pytest.mark.parametrize("unset", [{}, {"STRIPE_API_KEY": ""}], ids=["absent", "empty"])
def test_a_start_with_the_urls_set_and_no_stripe_api_key_is_refused_naming_it(unset):
    """It quietly targeted the local Stripe server's address with a local key (finding 8
    of issue 19)."""
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY is not set"):
        load_settings(PRODUCTION | unset)


def test_with_a_key_the_real_stripe_is_the_default():
    settings = load_settings(PRODUCTION | {"STRIPE_API_KEY": "sk_live_x"})

    assert settings.stripe_api_key == "sk_live_x"
    assert (settings.stripe_api_base, settings.stripe_meter_events_base) == (
        "https://api.stripe.com", "https://meter-events.stripe.com",
    )


@pytest.mark.parametrize(
    ("meter_api", "webhook_secret", "blind"),
    [("v2", None, True), ("v2", "whsec_x", False), ("v1", None, False), (None, None, True)],
    ids=["v2-no-secret", "v2-secret", "v1-no-secret", "default-v2-no-secret"],
)
def test_error_reports_are_blind_only_with_the_v2_stream_and_no_webhook_secret(meter_api, webhook_secret, blind):
    """v2 tells of dropped events only through the webhook; v1 answers each call with the outcome."""
    environ = PRODUCTION | {"STRIPE_API_KEY": "sk_live_x"}
    environ |= {"STRIPE_METER_API": meter_api} if meter_api else {}
    environ |= {"STRIPE_WEBHOOK_SECRET": webhook_secret} if webhook_secret else {}

    assert load_settings(environ).stripe_error_reports_blind is blind
