"""v2 events (``GET /v2/core/events[/{id}]``) and their delivery to an event destination:
thin payloads signed like Stripe's, checked with the SDK's own ``parse_event_notification``.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
import stripe as stripe_sdk

from local_stripe.testing import receive_webhooks
from tests.support.stripe_sdk import API_KEY, sdk_client, settle, v2_event

pytestmark = pytest.mark.usefixtures("account")

SECRET = "whsec_tests_of_local_stripe"
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"
THIN_FIELDS = {"id", "object", "type", "created", "livemode", "context", "reason", "related_object"}


@pytest.fixture
def receiver(stripe):
    """An event destination configured on the server, recording what it receives."""
    with receive_webhooks() as receiver:
        stripe.set_webhook(receiver.url, SECRET)
        yield receiver


def report(stripe, streamer, *events: dict, idempotency_key: str | None = None) -> None:
    """Stream ``events``, validate them at once and move the clock past their report
    window (so their reports are emitted)."""
    options = {"idempotency_key": idempotency_key} if idempotency_key else {}
    streamer.v2.billing.meter_event_stream.create({"events": list(events)}, options)
    settle(stripe)


# -- delivery -----------------------------------------------------------------------------


def test_thin_event_is_signed_and_fetches_the_full_event(stripe, client, streamer, receiver, account):
    report(stripe, streamer, v2_event("cus_unknown"), idempotency_key="the-stream-call")

    [delivery] = receiver.wait_for(1)
    body = json.loads(delivery.body)
    assert set(body) == THIN_FIELDS
    assert (body["object"], body["type"], body["livemode"]) == ("v2.core.event", ERROR_REPORT, False)
    assert (body["context"], body["reason"]) == (None, None)
    assert body["related_object"] == {
        "id": account["id"],
        "type": "billing.meter",
        "url": f"/v1/billing/meters/{account['id']}",
    }

    notification = client.parse_event_notification(delivery.body, delivery.signature, SECRET)
    assert isinstance(notification, stripe_sdk.events.V1BillingMeterErrorReportTriggeredEventNotification)
    assert notification.related_object.id == account["id"]
    event = notification.fetch_event()
    assert isinstance(event, stripe_sdk.events.V1BillingMeterErrorReportTriggeredEvent)
    assert event.id == body["id"]
    assert event.data.developer_message_summary == "There is 1 invalid event"
    [error_type] = event.data.reason.error_types
    assert error_type.code == "meter_event_customer_not_found"
    assert error_type.sample_errors[0].error_message == "No such customer: 'cus_unknown'"
    assert error_type.sample_errors[0].request.identifier == "the-stream-call"
    assert notification.fetch_related_object().id == account["id"]


def test_no_meter_found_is_delivered_without_a_related_object(stripe, client, streamer, receiver):
    report(stripe, streamer, v2_event(event_name="unmetered"))

    [delivery] = receiver.wait_for(1)
    notification = client.parse_event_notification(delivery.body, delivery.signature, SECRET)
    assert isinstance(notification, stripe_sdk.events.V1BillingMeterNoMeterFoundEventNotification)
    assert json.loads(delivery.body)["related_object"] is None
    event = notification.fetch_event()
    assert isinstance(event, stripe_sdk.events.V1BillingMeterNoMeterFoundEvent)
    assert event.data.reason.error_types[0].code == "no_meter"


def test_a_wrong_secret_or_an_altered_body_fails_verification(stripe, client, streamer, receiver):
    report(stripe, streamer, v2_event("cus_unknown"))
    [delivery] = receiver.wait_for(1)

    with pytest.raises(stripe_sdk.SignatureVerificationError):
        client.parse_event_notification(delivery.body, delivery.signature, "whsec_not_the_secret")
    with pytest.raises(stripe_sdk.SignatureVerificationError):
        client.parse_event_notification(delivery.body.replace("v1.billing", "v2.billing"), delivery.signature, SECRET)
    assert stripe_sdk.WebhookSignature.verify_header(delivery.body, delivery.signature, SECRET)


def test_failed_deliveries_are_retried_and_signed_again(stripe, client, streamer):
    with receive_webhooks(fail_first=2) as receiver:
        stripe.set_webhook(receiver.url, SECRET)
        report(stripe, streamer, v2_event("cus_unknown"))

        attempts = receiver.wait_for(3)
        time.sleep(0.7)  # longer than the first retry delay: no fourth attempt follows a success
        assert len(receiver.received) == 3

    assert len({attempt.body for attempt in attempts}) == 1
    for attempt in attempts:
        client.parse_event_notification(attempt.body, attempt.signature, SECRET)


def test_without_a_destination_events_are_only_listed(stripe, client, streamer):
    assert stripe.faults()["webhook_url"] is None
    with receive_webhooks() as receiver:
        report(stripe, streamer, v2_event("cus_unknown"))
        time.sleep(0.2)
        assert receiver.received == []
    assert [event.type for event in client.v2.core.events.list().data] == [ERROR_REPORT]


def test_an_unreachable_destination_never_delays_a_request(stripe, streamer):
    stripe.set_webhook("http://127.0.0.1:9/unreachable")
    stripe.set_validation_delay(0)

    started = time.monotonic()
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event("cus_unknown") for _ in range(10)]})

    assert time.monotonic() - started < 0.5
    settle(stripe)
    assert len(stripe.core_events()) == 1


def test_webhook_settings_are_checked(stripe):
    for bad in ({"webhook_url": "ftp://example.com"}, {"webhook_secret": "sk_test_123"}, {"webhook_secret": 5}):
        answer = requests.post(f"{stripe.url}/_local/faults", json=bad, timeout=5)
        assert answer.status_code == 400
        assert next(iter(bad)) in answer.json()["error"]["message"]


# -- GET /v2/core/events ---------------------------------------------------------------------


@pytest.fixture
def five_reports(stripe, streamer, account) -> list[dict]:
    """Five v2 events, newest first: three reports on the account's meter, one on another
    meter, one no_meter_found; created at distinct milliseconds."""
    other = stripe.create_meter("other_meter")
    for event in (
        v2_event("cus_unknown"),
        v2_event("cus_unknown", event_name="other_meter"),
        v2_event(event_name="unmetered"),
        v2_event(value="x"),
        v2_event(payload={"value": "1"}),
    ):
        report(stripe, streamer, event)
        time.sleep(0.005)
    events = stripe.core_events()
    assert [e["type"] for e in events] == [ERROR_REPORT, ERROR_REPORT, NO_METER_FOUND, ERROR_REPORT, ERROR_REPORT]
    assert [(e["related_object"] or {}).get("id") for e in events] == [
        account["id"],
        account["id"],
        None,
        other["id"],
        account["id"],
    ]
    return events


def test_list_is_newest_first_and_retrieve_gives_the_full_event(client, five_reports):
    listed = client.v2.core.events.list()

    assert [event.id for event in listed.data] == [event["id"] for event in five_reports]
    assert listed.next_page_url is None and listed.previous_page_url is None
    for event in listed.data:
        retrieved = client.v2.core.events.retrieve(event.id)
        assert retrieved.to_dict() == event.to_dict()
        assert retrieved.data.reason.error_count == 1
        assert retrieved.data.validation_start <= retrieved.data.validation_end


def test_list_filters_by_types_object_and_creation_time(client, five_reports, account):
    def ids(**params) -> list[str]:
        return [event.id for event in client.v2.core.events.list(params).data]

    newest, second, no_meter, other, oldest = (event["id"] for event in five_reports)
    assert ids(types=[NO_METER_FOUND]) == [no_meter]
    assert ids(types=[NO_METER_FOUND, ERROR_REPORT]) == [newest, second, no_meter, other, oldest]
    assert ids(object_id=account["id"]) == [newest, second, oldest]
    assert ids(object_id=account["id"], types=[NO_METER_FOUND]) == []
    created = {event["id"]: event["created"] for event in five_reports}
    assert ids(created={"gt": created[other]}) == [newest, second, no_meter]
    assert ids(created={"gte": created[other], "lt": created[second]}) == [no_meter, other]
    assert ids(created={"lte": created[oldest]}) == [oldest]


def test_list_pages_follow_next_and_previous_page_urls(stripe, client, five_reports, account):
    ids = [event["id"] for event in five_reports]

    first = client.v2.core.events.list({"limit": 2})
    assert [event.id for event in first.data] == ids[:2]
    assert first.previous_page_url is None
    assert [event.id for event in first.auto_paging_iter()] == ids

    headers = {"Authorization": f"Bearer {API_KEY}"}
    second = requests.get(stripe.url + first.next_page_url, headers=headers, timeout=5).json()
    assert [event["id"] for event in second["data"]] == ids[2:4]
    back = requests.get(stripe.url + second["previous_page_url"], headers=headers, timeout=5).json()
    assert [event["id"] for event in back["data"]] == ids[:2]
    third = requests.get(stripe.url + second["next_page_url"], headers=headers, timeout=5).json()
    assert ([event["id"] for event in third["data"]], third["next_page_url"]) == (ids[4:], None)

    filtered = client.v2.core.events.list({"limit": 1, "object_id": account["id"]})
    assert [event.id for event in filtered.auto_paging_iter()] == [ids[0], ids[1], ids[4]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"types": [f"type.{i}" for i in range(21)]},
        {"created": {"gt": "yesterday"}},
        {"created": {"after": "2024-01-01T00:00:00Z"}},
        {"object": "v2.core.event"},
        {"page": "not-a-token"},
    ],
)
def test_list_refuses_bad_parameters(client, params):
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v2.core.events.list(params)
    assert caught.value.http_status == 400


def test_a_page_token_takes_no_other_parameter(client, five_reports):
    first = client.v2.core.events.list({"limit": 1})
    with pytest.raises(stripe_sdk.InvalidRequestError):
        client.raw_request("get", f"{first.next_page_url}&limit=3")


def test_events_need_a_secret_key_and_unknown_ids_are_missing(stripe, client, five_reports):
    assert requests.get(f"{stripe.url}/v2/core/events", timeout=5).status_code == 401
    event_id = five_reports[0]["id"]
    assert requests.get(f"{stripe.url}/v2/core/events/{event_id}", timeout=5).status_code == 401
    with pytest.raises(stripe_sdk.AuthenticationError):
        sdk_client(stripe, api_key="pk_test_publishable").v2.core.events.retrieve(event_id)

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v2.core.events.retrieve("evt_test_unknown")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
