"""The account's event destinations through the real SDK (``client.v2.core.event_destinations``):
the configured ``webhook_url`` as one enabled webhook endpoint for the meter error
reports, or none."""

from __future__ import annotations

import pytest
import stripe as stripe_sdk

ERROR_REPORT_TYPES = ["v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"]
URL = "http://127.0.0.1:9/stripe/events"


def test_without_a_webhook_url_there_is_no_destination(stripe, client):
    listed = client.v2.core.event_destinations.list()

    assert listed.data == []
    assert listed.next_page_url is None


def test_the_webhook_url_is_one_enabled_destination_for_the_error_reports(stripe, client):
    stripe.set_webhook(URL)

    [destination] = client.v2.core.event_destinations.list().data

    assert isinstance(destination, stripe_sdk.v2.core.EventDestination)
    assert (destination.object, destination.type, destination.status) == (
        "v2.core.event_destination",
        "webhook_endpoint",
        "enabled",
    )
    assert destination.enabled_events == ERROR_REPORT_TYPES
    assert destination.event_payload == "thin"
    # Stripe redacts the URL unless asked, and never shows the secret again.
    assert destination.webhook_endpoint.url is None
    assert destination.webhook_endpoint.signing_secret is None


def test_the_url_is_shown_when_included(stripe, client):
    stripe.set_webhook(URL)

    [destination] = client.v2.core.event_destinations.list({"include": ["webhook_endpoint.url"]}).data
    retrieved = client.v2.core.event_destinations.retrieve(destination.id, {"include": ["webhook_endpoint.url"]})

    assert destination.webhook_endpoint.url == retrieved.webhook_endpoint.url == URL
    assert retrieved.id == destination.id


def test_the_destination_changes_with_the_url(stripe, client):
    stripe.set_webhook(URL)
    [first] = client.v2.core.event_destinations.list().data
    stripe.set_webhook(URL + "/elsewhere")
    [second] = client.v2.core.event_destinations.list().data

    assert first.id != second.id
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v2.core.event_destinations.retrieve(first.id)
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


def test_a_reset_forgets_a_url_set_since_start(stripe, client):
    stripe.set_webhook(URL)
    stripe.reset()

    assert client.v2.core.event_destinations.list().data == []
