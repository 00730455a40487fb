"""The server's movable clock (``/_local/clock``, ``advance_clock``) and the 24 h rules it
drives: identifiers are unique within a rolling 24 h from their first receipt (a resend a
day later is a new event, as at Stripe, where it double bills), sessions expire by it,
and what the server makes is ``created`` by it."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
import stripe as stripe_sdk

from tests.support.stripe_sdk import open_session, settle, v1_event, v2_event

pytestmark = pytest.mark.usefixtures("account")

DAY = 24 * 3600


def test_the_clock_is_real_time_until_moved_and_a_reset_puts_it_back(stripe):
    before = requests.get(f"{stripe.url}/_local/clock", timeout=5).json()
    assert before["offset"] == 0

    moved = requests.post(f"{stripe.url}/_local/clock", json={"advance_seconds": 3600}, timeout=5).json()

    assert moved["offset"] == 3600
    assert 3600 <= moved["now"] - before["now"] < 3660
    assert abs(stripe.now() - moved["now"]) < 60
    stripe.reset()
    assert requests.get(f"{stripe.url}/_local/clock", timeout=5).json()["offset"] == 0


@pytest.mark.parametrize("body", [{}, {"advance_seconds": -1}, {"advance_seconds": "60"}, {"advance_seconds": True}])
def test_the_clock_only_moves_forward_by_a_number(stripe, body):
    answer = requests.post(f"{stripe.url}/_local/clock", json=body, timeout=5)

    assert answer.status_code == 400
    assert stripe.state.clock.offset == 0


def test_what_the_server_makes_is_created_by_its_clock(stripe, client):
    later = stripe.advance_clock(DAY)

    event = client.v1.billing.meter_events.create(v1_event())
    session = client.v2.billing.meter_event_session.create()

    assert abs(event.created - later) < 60
    assert abs(dt.datetime.fromisoformat(session.created).timestamp() - later) < 60


def test_a_session_expires_by_the_clock(stripe, client):
    streamer, _ = open_session(stripe, client)
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event()]})

    stripe.advance_clock(15 * 60)

    with pytest.raises(stripe_sdk.TemporarySessionExpiredError):
        streamer.v2.billing.meter_event_stream.create({"events": [v2_event()]})


def test_a_v1_identifier_is_refused_within_24_hours_and_a_new_event_after(stripe, client):
    first = v1_event(value="1")
    client.v1.billing.meter_events.create(first)

    stripe.advance_clock(DAY - 60)
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(first)
    assert caught.value.code == "resource_already_exists"

    stripe.advance_clock(60)  # 24 h after the first receipt, not after the refused resend
    client.v1.billing.meter_events.create(first)
    assert [e["identifier"] for e in stripe.meter_events()] == [first["identifier"]] * 2


def test_a_v2_identifier_is_dropped_within_24_hours_and_counted_again_after(stripe, client):
    streamer, _ = open_session(stripe, client)
    event = v2_event(value="2")
    client.v1.billing.meter_events.create({**v1_event(value="5"), "identifier": event["identifier"]})

    streamer.v2.billing.meter_event_stream.create({"events": [event]})
    settle(stripe)
    assert [e["value"] for e in stripe.meter_events()] == ["5"]

    stripe.advance_clock(DAY)
    streamer, _ = open_session(stripe, client)
    streamer.v2.billing.meter_event_stream.create({"events": [event]})  # a day old: still within 35 days
    settle(stripe)
    assert [e["value"] for e in stripe.meter_events()] == ["5", "2"]

