"""A process start with ``STRIPE_METER_API=v2`` and no ``STRIPE_WEBHOOK_SECRET`` warns that
dropped meter events cannot be learned of, and what to set; ``a700_stripe_error_reports_blind``
says the same on ``/metrics`` (the last start's settings: fixed and restarted, it is 0)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import start_checks

GAUGE = "a700_stripe_error_reports_blind"


def blind_gauge(client) -> float:
    (family,) = [f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)) if f.name == GAUGE]
    (sample,) = family.samples
    return sample.value


def start_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == start_checks.__name__ and r.levelno == logging.WARNING]


def test_a_v2_start_without_the_webhook_secret_warns_and_sets_the_gauge(settings, client, caplog):
    start_checks.check(settings.replace(stripe_meter_api="v2", stripe_webhook_secret=None))

    (warning,) = start_warnings(caplog)
    assert "this service cannot learn of the meter events Stripe drops" in warning
    assert "set its signing secret (whsec_...) as STRIPE_WEBHOOK_SECRET" in warning
    assert blind_gauge(client) == 1


@pytest.mark.parametrize(
    "changes", [{"stripe_meter_api": "v2", "stripe_webhook_secret": "whsec_set"}, {"stripe_meter_api": "v1"}],
    ids=["v2-with-the-secret", "v1"],
)
def test_a_start_that_can_learn_of_dropped_events_says_nothing_and_clears_the_gauge(settings, client, caplog, changes):
    start_checks.check(settings.replace(stripe_meter_api="v2", stripe_webhook_secret=None))  # as a blind start left it
    caplog.clear()

    start_checks.check(settings.replace(**{"stripe_webhook_secret": None} | changes))

    assert start_warnings(caplog) == []
    assert blind_gauge(client) == 0
