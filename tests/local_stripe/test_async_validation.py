"""The v2 meter event stream validates asynchronously, as Stripe does: a call with well-formed
events answers ``{}`` at once, each event is judged later, and invalid ones are dropped
(never summarized) and reported as v2 events, per meter and per report window once the
window has ended. Tests force the validation with ``stripe.validate_now()`` (``POST
/_local/validate``) and move the server's clock past the report window and the summary
lag (``settle``) rather than sleeping, except where the delay itself is under test.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
import requests
import stripe as stripe_sdk

from local_stripe.testing import serve_in_thread
from tests.support.stripe_sdk import (
    at_report_window_start,
    open_session,
    rfc3339_millis,
    sdk_client,
    settle,
    v1_event,
    v2_event,
)

pytestmark = pytest.mark.usefixtures("account")

ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"


def summarized(client, meter_id: str, customer: str = "cus_a") -> float:
    """The customer's total on the meter over every time an event may have."""
    now = int(time.time()) // 60 * 60
    window = {"customer": customer, "start_time": now - 40 * 86400, "end_time": now + 3600}
    [summary] = client.v1.billing.meters.event_summaries.list(meter_id, window).data
    return summary.aggregated_value


def invalid(stripe) -> list[tuple[str, str]]:
    return [(event["identifier"], event["error_code"]) for event in stripe.meter_events("invalid")]


def at(**offset) -> str:
    return rfc3339_millis(dt.datetime.now(dt.UTC) + dt.timedelta(**offset))


@pytest.mark.parametrize(
    ("make_bad", "code"),
    [
        (lambda: v2_event(payload={"value": "5"}), "meter_event_no_customer_defined"),
        (lambda: v2_event("cus_never_created", "5"), "meter_event_customer_not_found"),
        (lambda: v2_event("cus_b", "5"), "meter_event_customer_not_found"),  # deleted below
        (lambda: v2_event(payload={"stripe_customer_id": "cus_a"}), "meter_event_value_not_found"),
        (lambda: v2_event(value="five"), "meter_event_invalid_value"),
        (lambda: v2_event(value="NaN"), "meter_event_invalid_value"),
        (lambda: v2_event(value="1234567890123456"), "meter_event_value_too_many_digits"),
        (lambda: v2_event(value="3.5"), "meter_event_invalid_value"),  # whole numbers only
        (lambda: v2_event(value="0.1234567890123456"), "meter_event_invalid_value"),
        (lambda: v2_event(value="5", timestamp=at(days=-35, minutes=-1)), "timestamp_too_far_in_past"),
        (lambda: v2_event(value="5", timestamp=at(minutes=5, seconds=30)), "timestamp_in_future"),
    ],
)
def test_each_rule_drops_the_event_with_its_error_code(stripe, client, streamer, account, make_bad, code):
    client.v1.customers.delete("cus_b")
    good, bad = v2_event("cus_a", "2"), make_bad()

    streamer.v2.billing.meter_event_stream.create({"events": [good, bad]}, {"idempotency_key": "the-call"})
    assert [e["identifier"] for e in stripe.meter_events("pending")] == [good["identifier"], bad["identifier"]]
    settle(stripe)

    assert [event["identifier"] for event in stripe.meter_events()] == [good["identifier"]]
    assert invalid(stripe) == [(bad["identifier"], code)]
    assert summarized(client, account["id"]) == 2
    [report] = client.v2.core.events.list().data
    assert (report.type, report.related_object.id) == (ERROR_REPORT, account["id"])
    assert [(t.code, t.error_count) for t in report.data.reason.error_types] == [(code, 1)]
    # The SDK documents the sample's request.identifier as "the request idempotency key".
    assert report.data.reason.error_types[0].sample_errors[0].request.identifier == "the-call"


def test_events_of_an_inactive_meter_are_dropped_as_archived_meter(stripe, client, streamer, account):
    events = [v2_event("cus_a", "2"), v2_event("cus_b", "3")]
    streamer.v2.billing.meter_event_stream.create({"events": events})
    client.v1.billing.meters.deactivate(account["id"])
    settle(stripe)

    assert stripe.meter_events() == []
    assert invalid(stripe) == [(event["identifier"], "archived_meter") for event in events]
    [report] = client.v2.core.events.list().data
    assert report.related_object.id == account["id"]
    assert (report.data.reason.error_types[0].code, report.data.reason.error_count) == ("archived_meter", 2)


def test_events_without_a_meter_are_reported_as_no_meter_found(stripe, client, streamer, account):
    unmetered = [v2_event(event_name="unmetered_a"), v2_event(event_name="unmetered_b")]
    bad_value = v2_event(value="x")
    streamer.v2.billing.meter_event_stream.create({"events": [*unmetered, bad_value, v2_event()]})
    settle(stripe)

    codes = ["no_meter", "no_meter", "meter_event_invalid_value"]
    assert invalid(stripe) == [(e["identifier"], code) for e, code in zip([*unmetered, bad_value], codes, strict=True)]
    reports = {event.type: event for event in client.v2.core.events.list().data}
    assert set(reports) == {NO_METER_FOUND, ERROR_REPORT}
    no_meter = reports[NO_METER_FOUND]
    assert no_meter.related_object is None
    [error_type] = no_meter.data.reason.error_types
    assert (error_type.code, error_type.error_count) == ("no_meter", 2)
    assert [sample.error_message for sample in error_type.sample_errors] == [
        "No meter was found matching event_name unmetered_a.",
        "No meter was found matching event_name unmetered_b.",
    ]
    assert reports[ERROR_REPORT].related_object.id == account["id"]
    assert reports[ERROR_REPORT].data.reason.error_count == 1


def test_a_report_counts_every_error_but_samples_three_per_code(stripe, client, streamer, account):
    bad_values = [v2_event(value=f"bad-{i}") for i in range(5)]
    unknown_customers = [v2_event(f"cus_unknown_{i}") for i in range(2)]
    window_start = at_report_window_start(stripe)
    streamer.v2.billing.meter_event_stream.create({"events": [*bad_values, v2_event("cus_a", "7")]}, {"idempotency_key": "one"})
    streamer.v2.billing.meter_event_stream.create({"events": unknown_customers}, {"idempotency_key": "two"})
    settle(stripe)

    [report] = client.v2.core.events.list().data
    data = report.data
    assert data.developer_message_summary == "There are 7 invalid events"
    assert data.reason.error_count == 7
    assert [(t.code, t.error_count, len(t.sample_errors)) for t in data.reason.error_types] == [
        ("meter_event_invalid_value", 5, 3),
        ("meter_event_customer_not_found", 2, 2),
    ]
    samples = data.reason.error_types[0].sample_errors
    assert [s.request.identifier for s in samples] == ["one"] * 3
    assert samples[0].error_message == "Value for key value must be a number, got 'bad-0'."
    assert [s.request.identifier for s in data.reason.error_types[1].sample_errors] == ["two"] * 2
    start, end = (dt.datetime.fromisoformat(data[key]).timestamp() for key in ("validation_start", "validation_end"))
    assert (start, end) == (window_start, window_start + stripe.faults()["report_window_seconds"])
    assert summarized(client, account["id"]) == 7


def test_events_are_accepted_at_once_and_judged_after_the_delay(stripe, client, streamer):
    stripe.set_validation_delay(0.3)
    good, bad = v2_event("cus_a", "2"), v2_event("cus_unknown")

    sent = time.monotonic()
    streamer.v2.billing.meter_event_stream.create({"events": [good, bad]})
    assert [e["identifier"] for e in stripe.meter_events("pending")] == [good["identifier"], bad["identifier"]]
    assert stripe.meter_events() == stripe.meter_events("invalid") == []
    assert client.v2.core.events.list().data == []

    while not stripe.meter_events() and time.monotonic() - sent < 5:
        time.sleep(0.02)
    assert time.monotonic() - sent >= 0.3
    assert [e["identifier"] for e in stripe.meter_events()] == [good["identifier"]]
    assert invalid(stripe) == [(bad["identifier"], "meter_event_customer_not_found")]
    assert stripe.meter_events("pending") == []
    assert client.v2.core.events.list().data == []  # its report window has not ended
    stripe.advance_clock(stripe.faults()["report_window_seconds"])
    assert [event.type for event in client.v2.core.events.list().data] == [ERROR_REPORT]


def test_a_zero_delay_judges_the_events_before_the_call_answers(stripe, streamer):
    stripe.set_validation_delay(0)
    good, bad = v2_event("cus_a", "2"), v2_event("cus_a", "oops")

    streamer.v2.billing.meter_event_stream.create({"events": [good, bad]})

    assert [e["identifier"] for e in stripe.meter_events()] == [good["identifier"]]
    assert invalid(stripe) == [(bad["identifier"], "meter_event_invalid_value")]


def test_events_are_judged_against_the_account_at_validation_time(stripe, client, streamer):
    early = v2_event("cus_later", event_name="later_meter")
    streamer.v2.billing.meter_event_stream.create({"events": [early]})
    stripe.create_meter("later_meter")
    stripe.create_customers("cus_later")
    stripe.validate_now()

    assert [e["identifier"] for e in stripe.meter_events()] == [early["identifier"]]


def test_a_corrected_resend_of_an_invalid_event_counts(stripe, client, streamer, account):
    event = v2_event("cus_late", "4")
    streamer.v2.billing.meter_event_stream.create({"events": [event]})
    stripe.validate_now()
    assert invalid(stripe) == [(event["identifier"], "meter_event_customer_not_found")]

    stripe.create_customers("cus_late")
    streamer.v2.billing.meter_event_stream.create({"events": [event]})
    settle(stripe)

    assert [e["identifier"] for e in stripe.meter_events()] == [event["identifier"]]
    assert summarized(client, account["id"], "cus_late") == 4


def test_a_pending_identifier_is_known_to_v1_and_v2(stripe, client, streamer, account):
    event = v2_event("cus_a", "3")
    streamer.v2.billing.meter_event_stream.create({"events": [event]})
    again = {**event, "payload": {"stripe_customer_id": "cus_a", "value": "9"}}
    streamer.v2.billing.meter_event_stream.create({"events": [again]})
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create({**v1_event("cus_a", "5"), "identifier": event["identifier"]})
    assert caught.value.code == "resource_already_exists"
    settle(stripe)

    assert [(e["identifier"], e["value"]) for e in stripe.meter_events()] == [(event["identifier"], "3")]
    assert summarized(client, account["id"]) == 3


def test_idempotency_key_replays_a_stream_call_without_a_second_validation(stripe, client):
    _, session = open_session(stripe, client)
    headers = {"Authorization": f"Bearer {session.authentication_token}", "Idempotency-Key": "stream-call-1"}
    body = {"events": [v2_event("cus_a", "2"), v2_event("cus_unknown")]}

    def send() -> requests.Response:
        answer = requests.post(f"{stripe.url}/v2/billing/meter_event_stream", json=body, headers=headers, timeout=5)
        stripe.validate_now()
        return answer

    first, replay = send(), send()

    assert first.json() == replay.json() == {}
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(stripe.meter_events()) == len(stripe.meter_events("invalid")) == 1
    settle(stripe)
    assert len(client.v2.core.events.list().data) == 1


def test_local_routes_validate_and_list_by_status(stripe, streamer):
    good, bad = v2_event("cus_a", "2"), v2_event(payload={"value": "1"})
    streamer.v2.billing.meter_event_stream.create({"events": [good, bad]})

    def listed(status: str) -> list[dict]:
        return requests.get(f"{stripe.url}/_local/meter_events", params={"status": status}, timeout=5).json()["data"]

    assert len(listed("pending")) == 2
    assert requests.post(f"{stripe.url}/_local/validate", timeout=5).json() == {"validated": True}
    assert [e["identifier"] for e in listed("valid")] == [good["identifier"]]
    [dropped] = listed("invalid")
    assert (dropped["identifier"], dropped["error_code"]) == (bad["identifier"], "meter_event_no_customer_defined")
    assert dropped["error_message"] == "Customer mapping key stripe_customer_id not found in payload."
    assert dropped["payload"] == {"value": "1"}
    assert requests.get(f"{stripe.url}/_local/meter_events", params={"status": "all"}, timeout=5).status_code == 400


def test_reset_forgets_pending_events_and_settings_return_to_the_defaults():
    with serve_in_thread() as server:
        server.create_customers("cus_a")
        server.create_meter("agent700_cost")
        streamer = open_session(server, sdk_client(server))[0]
        server.set_validation_delay(30)
        streamer.v2.billing.meter_event_stream.create({"events": [v2_event()]})

        server.reset()

        assert server.meter_events("pending") == []
        assert server.faults()["validation_delay_seconds"] == 1.0


# -- report windows ------------------------------------------------------------------------


def test_two_validation_passes_in_one_window_make_one_report_when_it_ends(stripe, client, streamer):
    window_start = at_report_window_start(stripe)
    for customer in ("cus_unknown_1", "cus_unknown_2"):
        streamer.v2.billing.meter_event_stream.create({"events": [v2_event(customer)]})
        stripe.validate_now()
    assert client.v2.core.events.list().data == []  # the window has not ended

    answer = requests.post(f"{stripe.url}/_local/clock", json={"advance_seconds": stripe.faults()["report_window_seconds"]}, timeout=5)

    assert answer.status_code == 200
    [report] = client.v2.core.events.list().data  # emitted before the clock route answered
    assert report.data.reason.error_count == 2
    assert dt.datetime.fromisoformat(report.data.validation_start).timestamp() == window_start


def test_events_of_two_windows_are_reported_in_two_reports(stripe, client, streamer):
    stripe.set_faults(report_window_seconds=10)
    at_report_window_start(stripe)
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event("cus_unknown")]})
    stripe.advance_clock(10)
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event("cus_unknown"), v2_event("cus_unknown")]})
    settle(stripe)

    reports = client.v2.core.events.list().data
    assert [r.data.reason.error_count for r in reports] == [2, 1]  # newest first
    assert reports[0].data.validation_start == reports[1].data.validation_end


def test_a_report_waits_for_the_events_of_its_window_to_be_judged(stripe, client, streamer):
    stripe.set_faults(report_window_seconds=1, validation_delay_seconds=30)
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event("cus_unknown")]})

    stripe.advance_clock(2)  # the window has ended, its event is not judged yet
    assert client.v2.core.events.list().data == []
    stripe.advance_clock(30)
    assert len(client.v2.core.events.list().data) == 1


def test_samples_can_name_the_events_identifier_instead(stripe, client, streamer):
    stripe.set_faults(sample_request_identifier="event_identifier")
    bad = v2_event("cus_unknown")
    streamer.v2.billing.meter_event_stream.create({"events": [bad]}, {"idempotency_key": "the-call"})
    settle(stripe)

    [report] = client.v2.core.events.list().data
    assert report.data.reason.error_types[0].sample_errors[0].request.identifier == bad["identifier"]


def test_a_keyless_stream_call_samples_a_key_of_its_own(stripe, client):
    _, session = open_session(stripe, client)
    headers = {"Authorization": f"Bearer {session.authentication_token}"}
    requests.post(f"{stripe.url}/v2/billing/meter_event_stream", json={"events": [v2_event("cus_unknown")]}, headers=headers, timeout=5)
    settle(stripe)

    [report] = client.v2.core.events.list().data
    identifier = report.data.reason.error_types[0].sample_errors[0].request.identifier
    assert identifier and identifier != stripe.meter_events("invalid")[0]["identifier"]
