"""Summaries are eventually consistent and per meter; meter event adjustments cancel an
event received within 24 h, which then leaves the summaries (after the same lag)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import pytest
import requests
import stripe as stripe_sdk

from local_stripe.clock import Clock
from local_stripe.state import MeterEvent, Store
from tests.support.stripe_sdk import API_KEY, EVENT_NAME, open_session, settle, v1_event, v2_event

pytestmark = pytest.mark.usefixtures("account")

DAY = 24 * 3600


def summarized(client, meter_id: str, customer: str = "cus_a") -> float:
    now = int(time.time()) // 60 * 60
    window = {"customer": customer, "start_time": now - 3 * 86400, "end_time": now + 3 * 86400}
    [summary] = client.v1.billing.meters.event_summaries.list(meter_id, window).data
    return summary.aggregated_value


# -- eventual consistency ----------------------------------------------------------------------


def test_an_event_counts_only_once_the_summary_lag_has_passed(stripe, client, account):
    lag = stripe.faults()["summary_lag_seconds"]
    assert lag > 0  # on by default, as at Stripe
    client.v1.billing.meter_events.create(v1_event(value="3"))

    assert summarized(client, account["id"]) == 0
    stripe.advance_clock(lag)
    assert summarized(client, account["id"]) == 3


def test_a_lag_of_zero_counts_at_once(stripe, client, account):
    stripe.set_faults(summary_lag_seconds=0)
    client.v1.billing.meter_events.create(v1_event(value="3"))

    assert summarized(client, account["id"]) == 3


def test_summaries_are_per_meter_not_per_event_name(stripe, client, account):
    client.v1.billing.meter_events.create(v1_event(value="3"))
    client.v1.billing.meters.deactivate(account["id"])
    replacement = stripe.create_meter(EVENT_NAME)
    client.v1.billing.meter_events.create(v1_event(value="4"))
    settle(stripe)

    assert summarized(client, account["id"]) == 3
    assert summarized(client, replacement["id"]) == 4


# -- adjustments ---------------------------------------------------------------------------


def test_a_v1_cancel_answers_the_adjustment_and_the_event_leaves_the_summaries(stripe, client, account):
    event = v1_event(value="3")
    client.v1.billing.meter_events.create(event)
    client.v1.billing.meter_events.create(v1_event(value="4"))
    settle(stripe)

    adjustment = client.v1.billing.meter_event_adjustments.create(
        {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": event["identifier"]}}
    )

    assert isinstance(adjustment, stripe_sdk.billing.MeterEventAdjustment)
    assert (adjustment.object, adjustment.type, adjustment.event_name) == ("billing.meter_event_adjustment", "cancel", EVENT_NAME)
    assert adjustment.cancel.identifier == event["identifier"]
    assert adjustment.status in ("pending", "complete")
    assert summarized(client, account["id"]) == 7  # not yet: summaries lag
    stripe.advance_clock(stripe.faults()["summary_lag_seconds"])
    assert summarized(client, account["id"]) == 4


def test_a_v2_cancel_takes_the_secret_key_and_answers_the_v2_adjustment(stripe, client, account):
    streamer, _ = open_session(stripe, client)
    event = v2_event(value="5")
    streamer.v2.billing.meter_event_stream.create({"events": [event]})
    settle(stripe)

    adjustment = client.v2.billing.meter_event_adjustments.create(
        {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": event["identifier"]}}
    )
    settle(stripe)

    assert isinstance(adjustment, stripe_sdk.v2.billing.MeterEventAdjustment)
    assert adjustment.object == "v2.billing.meter_event_adjustment"
    assert adjustment.id and adjustment.created
    assert (adjustment.type, adjustment.cancel.identifier) == ("cancel", event["identifier"])
    assert summarized(client, account["id"]) == 0


def test_an_event_older_than_24_hours_cannot_be_canceled(stripe, client):
    event = v1_event()
    client.v1.billing.meter_events.create(event)
    stripe.advance_clock(DAY)

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": event["identifier"]}}
        )

    assert (caught.value.http_status, caught.value.code, caught.value.param) == (400, "resource_missing", "cancel[identifier]")


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_an_unknown_identifier_cannot_be_canceled(stripe, client, api):
    params = {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": "never-sent"}}
    service = client.v1.billing if api == "v1" else client.v2.billing

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        service.meter_event_adjustments.create(params)

    assert (caught.value.http_status, caught.value.code) == (400, "resource_missing")


def test_a_second_cancel_is_refused_as_already_canceled(stripe, client):
    event = v1_event()
    client.v1.billing.meter_events.create(event)
    params = {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": event["identifier"]}}
    client.v2.billing.meter_event_adjustments.create(params)

    with pytest.raises(stripe_sdk.AlreadyCanceledError):
        client.v2.billing.meter_event_adjustments.create(params)


def test_an_adjustment_needs_its_parameters(stripe):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = requests.post(
        f"{stripe.url}/v1/billing/meter_event_adjustments", data={"event_name": EVENT_NAME, "type": "cancel"}, headers=headers, timeout=5
    )

    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "cancel[identifier]")


def test_an_adjustment_is_idempotent_like_any_call(stripe, client):
    event = v1_event()
    client.v1.billing.meter_events.create(event)
    params = {"event_name": EVENT_NAME, "type": "cancel", "cancel": {"identifier": event["identifier"]}}

    first = client.v2.billing.meter_event_adjustments.create(params, {"idempotency_key": "cancel-1"})
    again = client.v2.billing.meter_event_adjustments.create(params, {"idempotency_key": "cancel-1"})

    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"


# -- the concurrency rule is v1's -------------------------------------------------------------


def test_concurrent_stream_calls_for_one_customer_are_all_taken(stripe, client):
    streamer, _ = open_session(stripe, client)
    stripe.set_faults(latency_ms=300)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: streamer.v2.billing.meter_event_stream.create({"events": [v2_event()]}), range(3)))

    settle(stripe)
    assert len(stripe.meter_events()) == 3


def test_a_cancel_while_the_event_is_being_judged_finds_it_and_holds():
    # The validator takes the pending events, judges them, then settles them: a cancel in
    # between (the soak's voids raced their own report there) found no event at all.
    store = Store(Clock())
    now = store.clock.now()
    event = MeterEvent("row-1", EVENT_NAME, {"stripe_customer_id": "cus_a", "value": "5"}, int(now), "v2", int(now), now)
    store.record([event], duplicates="skip", pending=True)

    generation, due = store.take_pending(now)
    assert store.cancel(EVENT_NAME, "row-1") is not None  # still there while judged
    assert store.settle(generation, [dataclasses.replace(e, customer="cus_a", value="5") for e in due], [], 60)

    [listed] = store.meter_events()
    assert listed["identifier"] == "row-1" and listed["canceled_at"] is not None
    assert store.meter_events("pending") == []
    assert store.take_pending(now) == (generation, [])
