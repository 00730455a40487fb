"""``StripeMeter``: the real ``stripe`` SDK against the local Stripe server, v1 and v2."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid

import prometheus_client
import pytest

from shared import billing_window, stripe_meter
from shared.stripe_meter import MeterEvent, unsendable
from worker.stripe_reporting import Outcome, Result, StripeMeter, idempotency_key

SENTENCE_START = re.compile(r"[A-Z]")


def meter_events(count: int, customer: str = "cus_meter_a", *, start_value: int = 1) -> list[MeterEvent]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [
        MeterEvent(uuid.uuid4(), customer, start_value + index, now - dt.timedelta(minutes=index, seconds=index))
        for index in range(count)
    ]


def assert_at_stripe_once(stripe, events: list[MeterEvent], event_name: str = "agent700_cost") -> None:
    listed = stripe.meter_events()
    by_identifier = {}
    for item in listed:
        assert item["identifier"] not in by_identifier, f"{item['identifier']} reached Stripe twice"
        by_identifier[item["identifier"]] = item
    for event in events:
        item = by_identifier[str(event.row_id)]
        assert item["event_name"] == event_name
        assert item["customer"] == event.stripe_customer_id
        assert item["value"] == str(event.value)
        assert item["timestamp"] == int(event.occurred_at.timestamp())


def reported(result: Result) -> bool:
    """Reported, with the call that carried it."""
    return result.outcome is Outcome.REPORTED and result.error is None and result.call is not None


def all_reported(results: dict, events: list[MeterEvent]) -> bool:
    return set(results) == {e.row_id for e in events} and all(map(reported, results.values()))


@pytest.fixture(params=["v1", "v2"])
def api(request) -> str:
    return request.param


CUSTOMERS = ("cus_meter_a", "cus_meter_b", "cus_other", "cus_later", "cus_0", "cus_1", "cus_2")


@pytest.fixture(autouse=True)
def customers(stripe):
    """The Stripe customers the events below are for."""
    stripe.create_customers(*CUSTOMERS)


def test_reported_events_reach_stripe_with_the_row_id_value_customer_and_time(settings, stripe, api):
    events = meter_events(3) + meter_events(2, "cus_meter_b", start_value=10**14)  # up to Stripe's 15 digits

    results = StripeMeter(settings, api=api).report(events)

    assert all_reported(results, events)
    assert_at_stripe_once(stripe, events)
    assert len(stripe.meter_events()) == 5
    assert {item["via"] for item in stripe.meter_events()} == {api}


def test_more_than_one_stream_call_of_events(settings, stripe, api):
    events = meter_events(250)

    results = StripeMeter(settings, api=api).report(events)

    assert all_reported(results, events)
    assert_at_stripe_once(stripe, events)
    assert len(stripe.meter_events()) == 250


def test_a_second_report_of_the_same_rows_is_reported_and_not_counted_again(settings, stripe, api):
    events = meter_events(4)
    StripeMeter(settings, api=api).report(events)

    again_same_process = StripeMeter(settings, api=api).report(events)
    # Another process (no shared session), and a set of rows that only overlaps.
    overlapping = events[1:3] + meter_events(1, start_value=99)
    again_other = StripeMeter(settings, api=api).report(overlapping)

    assert all_reported(again_same_process, events)
    assert all_reported(again_other, overlapping)
    assert_at_stripe_once(stripe, events + overlapping)
    assert len(stripe.meter_events()) == 5


def test_a_second_report_of_the_same_rows_in_another_order_is_reported(settings, stripe, api):
    events = meter_events(5)
    meter = StripeMeter(settings, api=api)
    assert all_reported(meter.report(events), events)

    again = meter.report(list(reversed(events)))

    assert all_reported(again, events), again
    assert_at_stripe_once(stripe, events)
    assert len(stripe.meter_events()) == 5


def test_the_other_api_version_does_not_count_a_reported_row_again(settings, stripe):
    events = meter_events(3)
    StripeMeter(settings, api="v2").report(events)

    results = StripeMeter(settings, api="v1").report(events)

    assert all_reported(results, events)
    assert len(stripe.meter_events()) == 3


@pytest.mark.parametrize(("api", "status"), [("v2", 500), ("v2", 503), ("v2", 429), ("v1", 429)])
def test_a_short_burst_is_absorbed_by_the_sdk_retries_with_the_same_key(settings, stripe, api, status):
    """Where Stripe runs a retry again: v2 re-runs what failed, and a 429 is never stored."""
    events = meter_events(3)
    stripe.set_faults(fail_next=2, status=status)  # the SDK makes up to 3 attempts

    results = StripeMeter(settings, api=api).report(events)

    assert all_reported(results, events)
    assert stripe.faults()["fail_next"] == 0
    assert_at_stripe_once(stripe, events)


@pytest.mark.parametrize("status", [500, 503])
def test_v1_a_stored_5xx_is_replayed_to_its_key_and_the_next_attempt_takes_a_fresh_one(settings, stripe, status):
    """Stripe keeps a v1 key's first answer, a 500 included, for 24 h: an attempt under the
    same key gets it again however healthy Stripe is now; the next attempt's key does not,
    and the identifier still counts the event once."""
    (event,) = meter_events(1)
    meter = StripeMeter(settings, api="v1")
    stripe.set_faults(fail_next=1, status=status)

    first = meter.report([event])
    assert first[event.row_id].outcome is Outcome.RETRY
    assert stripe.faults()["fail_next"] == 0  # Stripe is fine again
    assert meter.report([event])[event.row_id].outcome is Outcome.RETRY  # the stored answer, replayed

    later = meter.report([dataclasses.replace(event, earlier_attempts=1)])  # as the reporter sends it next

    assert reported(later[event.row_id])
    assert later[event.row_id].call.request_key == idempotency_key([event.row_id], 1)
    assert_at_stripe_once(stripe, [event])


@pytest.mark.parametrize("status", [500, 429])
def test_a_long_burst_is_a_retry_then_success_after_it(settings, stripe, api, status):
    events = meter_events(3)
    meter = StripeMeter(settings, api=api)
    stripe.set_faults(fail_next=5, status=status)

    first = meter.report(events)

    assert set(first) == {e.row_id for e in events}
    assert {r.outcome for r in first.values()} == {Outcome.RETRY}
    for result in first.values():
        assert f"Stripe answered {status}" in result.error
    assert stripe.meter_events() == []

    stripe.set_faults(fail_next=0)  # the burst is over
    second = meter.report([dataclasses.replace(e, earlier_attempts=1) for e in events])  # as the reporter sends them next

    assert all_reported(second, events)
    assert_at_stripe_once(stripe, events)


def test_a_retry_stops_the_batch_and_leaves_the_rest_for_later(settings, stripe):
    events = meter_events(3)
    # Exactly the first event's one attempt: Stripe stores that 500, and the SDK does not
    # retry what Stripe marks as a stored answer (Stripe-Should-Retry: false).
    stripe.set_faults(fail_next=1, status=500)

    results = StripeMeter(settings, api="v1").report(events)

    assert {r.outcome for r in results.values()} == {Outcome.RETRY}
    assert stripe.meter_events() == []
    assert stripe.faults()["fail_next"] == 0  # the other two were not even tried


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        # An empty customer id: Stripe cannot map the event to a customer.
        (lambda e: MeterEvent(e.row_id, "", e.value, e.occurred_at), "Customer mapping key"),
        # Older than Stripe's 35 days.
        (lambda e: MeterEvent(e.row_id, e.stripe_customer_id, e.value, e.occurred_at - dt.timedelta(days=40)), "35"),
        # Too far in the future.
        (lambda e: MeterEvent(e.row_id, e.stripe_customer_id, e.value, e.occurred_at + dt.timedelta(hours=1)), "future"),
    ],
    ids=["no-customer", "too-old", "future"],
)
def test_a_permanent_refusal_fails_only_that_event_with_a_readable_error(settings, stripe, bad, fragment):
    """v1 judges each event as it is sent: the refused one fails at once."""
    good = meter_events(3)
    refused = bad(meter_events(1)[0])

    results = StripeMeter(settings, api="v1").report([good[0], refused, *good[1:]])

    assert results[refused.row_id].outcome is Outcome.FAILED
    error = results[refused.row_id].error
    assert error.startswith("Stripe refused the meter event (400): ") and fragment in error, error
    assert all(reported(results[e.row_id]) for e in good)
    assert_at_stripe_once(stripe, good)
    assert str(refused.row_id) not in {item["identifier"] for item in stripe.meter_events()}


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (lambda e: MeterEvent(e.row_id, "", e.value, e.occurred_at), "meter_event_no_customer_defined"),
        (lambda e: MeterEvent(e.row_id, "cus_nobody", e.value, e.occurred_at), "meter_event_customer_not_found"),
        (lambda e: MeterEvent(e.row_id, e.stripe_customer_id, e.value, e.occurred_at - dt.timedelta(days=40)), "timestamp_too_far_in_past"),
    ],
    ids=["no-customer", "unknown-customer", "too-old"],
)
def test_the_v2_stream_takes_a_bad_event_and_stripe_drops_it_later(settings, stripe, bad, code):
    """v2 judges asynchronously: the call answers for all, and Stripe drops the bad one
    afterwards (its error report is handled by ``worker.stripe_events``)."""
    good = meter_events(3)
    dropped = bad(meter_events(1)[0])

    results = StripeMeter(settings, api="v2").report([good[0], dropped, *good[1:]])

    assert all(map(reported, results.values()))
    assert_at_stripe_once(stripe, good)
    assert [(item["identifier"], item["error_code"]) for item in stripe.meter_events("invalid")] == [(str(dropped.row_id), code)]


def test_an_invalid_api_key_is_a_retry_with_a_readable_reason(settings, stripe, api):
    """A rotated or revoked key is the operator's to fix; the events wait for it (they
    stay recorded and back off) instead of all failing."""
    meter = StripeMeter(settings.replace(stripe_api_key="not-a-secret-key"), api=api)

    results = meter.report(meter_events(2))

    assert {r.outcome for r in results.values()} == {Outcome.RETRY}
    for result in results.values():
        assert result.error and "401" in result.error
    assert stripe.meter_events() == []


# --- the v2 meter event session ------------------------------------------------------------


def test_v2_reuses_its_session_across_calls(settings, stripe):
    meter = StripeMeter(settings, api="v2")
    meter.report(meter_events(2))
    token = meter._session_token

    assert all_reported(meter.report(events := meter_events(2, "cus_other")), events)
    assert meter._session_token == token


def test_v2_renews_a_session_that_ended_before_its_expiry(settings, stripe):
    meter = StripeMeter(settings, api="v2")
    first = meter_events(2)
    meter.report(first)
    stale_token = meter._session_token
    stripe.reset()  # the server forgets every session: the meter's token is now unknown there
    stripe.create_meter("agent700_cost")
    stripe.create_customers(*CUSTOMERS)

    later = meter_events(3, "cus_later")
    results = meter.report(later)

    assert all_reported(results, later)
    assert meter._session_token != stale_token
    assert_at_stripe_once(stripe, later)


def test_v2_renews_a_short_lived_session_before_each_call(settings, stripe):
    stripe.set_faults(session_ttl_seconds=2)  # shorter than the renewal margin
    meter = StripeMeter(settings, api="v2")
    tokens = []
    reported = []
    for batch in range(3):
        events = meter_events(2, f"cus_{batch}")
        assert all_reported(meter.report(events), events)
        tokens.append(meter._session_token)
        reported += events

    assert len(set(tokens)) == 3
    assert_at_stripe_once(stripe, reported)


def test_v2_sessions_that_expire_at_once_are_a_retry_not_a_failure(settings, stripe):
    stripe.set_faults(session_ttl_seconds=0)
    meter = StripeMeter(settings, api="v2")
    events = meter_events(2)

    results = meter.report(events)

    assert {r.outcome for r in results.values()} == {Outcome.RETRY}
    assert all("session" in r.error.lower() for r in results.values()), results
    assert stripe.meter_events() == []

    stripe.set_faults(session_ttl_seconds=900)
    assert all_reported(meter.report(events), events)
    assert_at_stripe_once(stripe, events)


def test_one_call_per_customer_is_kept_by_one_meter(settings, stripe, api):
    stripe.set_faults(one_call_per_customer=True, latency_ms=5)
    events = meter_events(120) + meter_events(30, "cus_meter_b")

    results = StripeMeter(settings, api=api).report(events)

    assert all_reported(results, events)
    assert len(stripe.meter_events()) == 150


def test_idempotency_keys_derive_from_the_row_ids_and_a_v1_attempt():
    a, b = uuid.uuid4(), uuid.uuid4()
    assert idempotency_key([a]) == f"agent700-meter-{a}" == idempotency_key([a])
    # Stripe stores a v1 key's first answer, a 500 included: a later attempt needs its own.
    assert idempotency_key([a], 2) == f"agent700-meter-{a}-2" != idempotency_key([a], 1)
    assert idempotency_key([a, b]) == idempotency_key([b, a])
    assert idempotency_key([a, b]) != idempotency_key([a])
    assert len(idempotency_key([uuid.uuid4() for _ in range(100)])) <= 255


@pytest.mark.parametrize(
    ("value", "sendable"),
    [(10**15 - 1, True), (10**15, False), (-(10**15 - 1), True)],
    ids=["15-digits", "16-digits", "15-digits-negative"],
)
def test_a_value_of_more_than_15_digits_is_not_sent_as_stripe_would_drop_it(value, sendable):
    """Stripe drops a meter value of more than 15 significant digits (after accepting the
    stream call). The integer sent is counted whole, so a value is never sent to be dropped."""
    now = dt.datetime.now(dt.UTC)
    problem = unsendable(MeterEvent(uuid.uuid4(), "cus_a", value, now), now)

    if sendable:
        assert problem is None
    else:
        assert problem == f"Its meter value {value} has more than 15 digits, which Stripe refuses; it was not sent."


def test_an_event_the_edge_accepts_at_its_oldest_is_still_sent_for_a_day_less_the_transit_margin():
    """The edge took 35 days, the reporter sends up to 35 days less 5 minutes: the last
    minutes of the window were accepted only to fail (finding 2 of issue 19). Now the
    edge's limit is a day inside the reporter's."""
    received_at = dt.datetime.now(dt.UTC)
    oldest = MeterEvent(uuid.uuid4(), "cus_a", 1, received_at - billing_window.MAX_ACCEPTED_AGE)
    margin = billing_window.PIPELINE_MARGIN - billing_window.SEND_MARGIN
    assert margin == dt.timedelta(hours=23, minutes=55)

    assert unsendable(oldest, received_at + margin - dt.timedelta(seconds=1)) is None
    assert unsendable(oldest, received_at + margin + dt.timedelta(seconds=1)).startswith("Too old for Stripe")


def test_each_reported_row_keeps_the_start_key_and_event_name_of_its_own_call(settings, stripe, api):
    events = meter_events(stripe_meter.STREAM_MAX_EVENTS + 1)
    before = dt.datetime.now(dt.UTC)

    results = StripeMeter(settings, api=api).report(events)

    calls = {result.call for result in results.values()}
    assert len(calls) == (2 if api == "v2" else len(events))  # one per request
    for call in calls:
        assert before <= call.started_at <= dt.datetime.now(dt.UTC) and call.event_name == "agent700_cost"
    if api == "v2":
        for call in calls:
            carried = [row_id for row_id, result in results.items() if result.call == call]
            assert call.request_key == idempotency_key(carried)
    else:
        assert {results[e.row_id].call.request_key for e in events} == {idempotency_key([e.row_id]) for e in events}


def test_a_stream_call_stripe_refuses_fails_only_the_events_it_refuses_and_is_counted(settings, stripe):
    """A 400 refuses the whole call; halving it finds the one malformed event (a customer
    id that is not a string); the others are reported by the stream, never by v1."""
    events = meter_events(7)
    malformed = MeterEvent(events[3].row_id, 12345, events[3].value, events[3].occurred_at)
    events[3] = malformed
    refusals = metrics_value("a700_stripe_stream_refusals_total")

    results = StripeMeter(settings, api="v2").report(events)

    assert results[malformed.row_id].outcome is Outcome.FAILED
    assert "(400)" in results[malformed.row_id].error and "payload" in results[malformed.row_id].error
    good = [e for e in events if e is not malformed]
    assert all(reported(results[e.row_id]) for e in good)
    assert_at_stripe_once(stripe, good)
    assert {item["via"] for item in stripe.meter_events()} == {"v2"}
    assert stripe.calls("/v1/billing/meter_events") == []
    position = sorted(str(e.row_id) for e in events).index(str(malformed.row_id))  # the body's order
    assert metrics_value("a700_stripe_stream_refusals_total") - refusals == halvings_to(position, len(events))


def halvings_to(position: int, size: int) -> int:
    """How many refused calls it takes to corner the event at ``position`` of ``size``."""
    calls = 1
    while size > 1:
        half = size // 2
        position, size = (position, half) if position < half else (position - half, size - half)
        calls += 1
    return calls


def metrics_value(name: str) -> float:
    return sum(
        sample.value for family in prometheus_client.REGISTRY.collect() for sample in family.samples
        if sample.name == name
    )
