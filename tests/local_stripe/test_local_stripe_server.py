"""The local Stripe server, driven through the real ``stripe`` SDK as the billing worker drives it.

The ``stripe`` fixture is the server (its state and faults reset per test); the SDK is
imported as ``stripe_sdk``. The exception classes asserted here are the contract the
billing worker relies on. The v2 stream's asynchronous validation has its own module
(``test_async_validation.py``).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
import stripe as stripe_sdk

from tests.support.stripe_sdk import API_KEY, EVENT_NAME, open_session, sdk_client, settle, v1_event, v2_event

pytestmark = pytest.mark.usefixtures("account")


@pytest.fixture
def no_retry_wait(monkeypatch):
    """The SDK waits >= 0.5 s before each retry; these tests only count retries."""
    monkeypatch.setattr(stripe_sdk.HTTPClient, "INITIAL_DELAY", 0.001)


# -- v1 meter events -----------------------------------------------------------------------


def test_v1_meter_event_answers_the_stripe_object_and_is_recorded(stripe, client):
    timestamp = int(time.time()) - 60
    params = v1_event("cus_1", "25", timestamp=timestamp)

    stripe.create_customers("cus_1")
    created = client.v1.billing.meter_events.create(params)

    assert created.object == "billing.meter_event"
    assert (created.event_name, created.identifier, created.timestamp) == (EVENT_NAME, params["identifier"], timestamp)
    assert created.payload.to_dict() == {"stripe_customer_id": "cus_1", "value": "25"}
    assert created.livemode is False
    assert abs(created.created - time.time()) < 60
    assert created.last_response.headers["Request-Id"].startswith("req_")
    [recorded] = stripe.meter_events()
    assert recorded | {"received_at": None} == {
        "identifier": params["identifier"],
        "event_name": EVENT_NAME,
        "customer": "cus_1",
        "value": "25",
        "timestamp": timestamp,
        "via": "v1",
        "received_at": None,
        "canceled_at": None,
    }


def test_duplicate_identifier_is_refused_as_resource_already_exists(stripe, client):
    params = v1_event(value="1")
    client.v1.billing.meter_events.create(params)

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create({**params, "payload": {"stripe_customer_id": "cus_a", "value": "7"}})

    assert caught.value.http_status == 400
    assert caught.value.code == "resource_already_exists"
    assert f"An event already exists with identifier {params['identifier']}" in caught.value.user_message
    assert [e["value"] for e in stripe.meter_events()] == ["1"]


def test_idempotency_key_replays_the_first_answer(stripe, client):
    params, options = v1_event(), {"idempotency_key": f"key-{uuid.uuid4()}"}

    first = client.v1.billing.meter_events.create(params, options)
    # Without the replay this would be a duplicate identifier (400).
    second = client.v1.billing.meter_events.create(params, options)

    assert second.to_dict() == first.to_dict()
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert second.last_response.headers["Original-Request"] == first.last_response.headers["Request-Id"]
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert len(stripe.meter_events()) == 1


def test_idempotency_key_with_other_params_is_an_idempotency_error(stripe, client):
    options = {"idempotency_key": f"key-{uuid.uuid4()}"}
    client.v1.billing.meter_events.create(v1_event(value="1"), options)

    with pytest.raises(stripe_sdk.IdempotencyError) as caught:
        client.v1.billing.meter_events.create(v1_event(value="2"), options)

    assert caught.value.http_status == 400
    assert [e["value"] for e in stripe.meter_events()] == ["1"]


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        (
            {"event_name": EVENT_NAME, "payload": {"value": "1"}},
            "payload[stripe_customer_id]",
            "meter_event_no_customer_defined",
        ),
        (v1_event(customer="cus_never_created"), "payload[stripe_customer_id]", "resource_missing"),
        (v1_event(event_name="no_such_meter"), "event_name", "resource_missing"),
        (
            {"event_name": EVENT_NAME, "payload": {"stripe_customer_id": "cus_a"}},
            "payload[value]",
            "meter_event_value_not_found",
        ),
        (v1_event(value="lots"), "payload[value]", "meter_event_invalid_value"),
        (v1_event(value="3.5"), "payload[value]", "meter_event_invalid_value"),  # whole numbers only
        (v1_event(value="1234567890123456"), "payload[value]", "meter_event_value_too_many_digits"),
        ({"payload": {"stripe_customer_id": "cus_a", "value": "1"}}, "event_name", "parameter_missing"),
        ({"event_name": EVENT_NAME}, "payload", "parameter_missing"),
        (lambda: v1_event(timestamp=int(time.time()) - 36 * 86400), "timestamp", "timestamp_too_far_in_past"),
        (lambda: v1_event(timestamp=int(time.time()) + 6 * 60), "timestamp", "timestamp_in_future"),
        (v1_event(unknown="x"), "unknown", "parameter_unknown"),
    ],
)
def test_invalid_meter_event_is_refused_naming_the_param(stripe, client, params, param, code):
    # A timestamp's distance from now is taken when the test runs, not when it is collected.
    params = params() if callable(params) else params
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(params)

    assert (caught.value.http_status, caught.value.param, caught.value.code) == (400, param, code)
    assert stripe.meter_events() == stripe.meter_events("invalid") == []


def test_v1_refusals_name_the_missing_customer_or_meter(stripe, client):
    for params, message in [
        (v1_event(customer="cus_unknown"), "No such customer: 'cus_unknown'"),
        (v1_event(event_name="no_such_meter"), "No meter was found matching event_name no_such_meter."),
    ]:
        with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
            client.v1.billing.meter_events.create(params)
        assert caught.value.user_message == message


def test_v1_event_for_a_deleted_customer_is_refused(stripe, client):
    client.v1.customers.delete("cus_b")

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(v1_event("cus_b"))

    assert (caught.value.code, caught.value.param) == ("resource_missing", "payload[stripe_customer_id]")
    assert stripe.meter_events() == []


def test_v1_timestamp_window_is_35_days_back_to_5_minutes_ahead(stripe, client):
    now = int(time.time())
    for timestamp in (now - 35 * 86400 + 60, now + 4 * 60):
        client.v1.billing.meter_events.create(v1_event(timestamp=timestamp))

    assert len(stripe.meter_events()) == 2


def test_missing_or_invalid_api_key_is_a_401(stripe):
    answer = requests.post(f"{stripe.url}/v1/billing/meter_events", data={"event_name": EVENT_NAME}, timeout=5)
    assert answer.status_code == 401
    assert answer.headers["Request-Id"].startswith("req_")
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "did not provide an API key" in answer.json()["error"]["message"]

    bad_key = sdk_client(stripe, api_key="pk_test_not_a_secret_key")
    with pytest.raises(stripe_sdk.AuthenticationError) as caught:
        bad_key.v1.billing.meter_events.create(v1_event())
    assert caught.value.http_status == 401
    assert stripe.meter_events() == []


def test_the_api_key_is_taken_by_basic_auth_too_as_stripe_takes_it(stripe):
    # `curl -u sk_test_...:` sends the key as the Basic user name with an empty password.
    stripe.create_customers("cus_a")
    answer = requests.post(
        f"{stripe.url}/v1/billing/meter_events",
        data={"event_name": EVENT_NAME, "payload[stripe_customer_id]": "cus_a", "payload[value]": "1"},
        auth=(API_KEY, ""),
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    assert len(stripe.meter_events()) == 1

    wrong = requests.post(f"{stripe.url}/v1/billing/meter_events", data={"event_name": EVENT_NAME}, auth=("pk_test_x", ""), timeout=5)
    assert wrong.status_code == 401
    assert len(stripe.meter_events()) == 1


# -- v2 meter event sessions and streams ------------------------------------------------------


def test_v2_session_lasts_15_minutes_and_streams_up_to_100_events(stripe, client):
    streamer, session = open_session(stripe, client)
    stripe.create_customers(*(f"cus_{i}" for i in range(100)))

    assert session.object == "v2.billing.meter_event_session"
    lifetime = dt.datetime.fromisoformat(session.expires_at) - dt.datetime.fromisoformat(session.created)
    assert abs(lifetime - dt.timedelta(minutes=15)) < dt.timedelta(seconds=1)

    streamer.v2.billing.meter_event_stream.create({"events": [v2_event(f"cus_{i}") for i in range(100)]})
    stripe.validate_now()
    assert len(stripe.meter_events()) == 100
    assert {e["via"] for e in stripe.meter_events()} == {"v2"}

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        streamer.v2.billing.meter_event_stream.create({"events": [v2_event() for _ in range(101)]})
    assert (caught.value.http_status, caught.value.param) == (400, "events")
    assert len(stripe.meter_events()) == 100


def test_v2_stream_counts_each_identifier_once(stripe, client):
    earlier = v1_event(value="100")
    client.v1.billing.meter_events.create(earlier)
    streamer, _ = open_session(stripe, client)
    first, second = v2_event(value="1"), v2_event(value="2")

    streamer.v2.billing.meter_event_stream.create(
        {"events": [first, second, {**first, "payload": {"stripe_customer_id": "cus_a", "value": "50"}}]}
    )
    streamer.v2.billing.meter_event_stream.create({"events": [second, {**earlier, "timestamp": first["timestamp"]}]})
    stripe.validate_now()

    assert sorted((e["identifier"], e["value"]) for e in stripe.meter_events()) == sorted(
        [(earlier["identifier"], "100"), (first["identifier"], "1"), (second["identifier"], "2")]
    )


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        (v2_event(payload={"stripe_customer_id": "cus_a", "value": 3}), "events[1].payload"),
        (v2_event(timestamp="yesterday"), "events[1].timestamp"),
        (v2_event(timestamp=1700000000), "events[1].timestamp"),
        ({"payload": {"stripe_customer_id": "cus_a", "value": "1"}}, "events[1].event_name"),
        (v2_event(dimensions={"region": "eu"}), "events[1].dimensions"),
        ("an event", "events[1]"),
    ],
)
def test_v2_stream_refuses_a_malformed_event_as_a_whole(stripe, streamer, bad, param):
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        streamer.v2.billing.meter_event_stream.create({"events": [v2_event(), bad]})

    assert (caught.value.http_status, caught.value.param) == (400, param)
    stripe.validate_now()
    assert stripe.meter_events() == stripe.meter_events("invalid") == []


@pytest.mark.parametrize(("body", "param"), [({}, "events"), ({"events": []}, "events"), ({"events": {}}, "events")])
def test_v2_stream_refuses_a_malformed_request(stripe, streamer, body, param):
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        streamer.v2.billing.meter_event_stream.create(body)

    assert (caught.value.http_status, caught.value.param) == (400, param)


def test_expired_or_unknown_session_token_is_a_temporary_session_expired_error(stripe, client):
    stripe.set_faults(session_ttl_seconds=0)
    expired, _ = open_session(stripe, client)
    unknown = sdk_client(stripe, api_key="mes_tok_never_issued")

    for streamer in (expired, unknown):
        with pytest.raises(stripe_sdk.TemporarySessionExpiredError) as caught:
            streamer.v2.billing.meter_event_stream.create({"events": [v2_event()]})
        assert caught.value.http_status == 401
        assert caught.value.code == "billing_meter_event_session_expired"
    assert stripe.meter_events() == []


# -- fault injection ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_class"), [(429, stripe_sdk.RateLimitError), (500, stripe_sdk.APIError)])
def test_injected_failures_answer_the_next_n_calls(stripe, client, status, error_class):
    stripe.set_faults(fail_next=2, status=status)
    params = v1_event()

    for _ in range(2):
        with pytest.raises(error_class) as caught:
            client.v1.billing.meter_events.create(params)
        assert caught.value.http_status == status
        assert caught.value.error.code == ("rate_limit" if status == 429 else None)
        # A 500 is stored under the call's idempotency key: a retry would only replay it.
        assert caught.value.headers["Stripe-Should-Retry"] == ("true" if status == 429 else "false")
    assert stripe.meter_events() == []

    client.v1.billing.meter_events.create(params)
    assert [e["identifier"] for e in stripe.meter_events()] == [params["identifier"]]


@pytest.mark.parametrize("path", ["v1", "v2"])
def test_sdk_retries_through_injected_429s(stripe, client, no_retry_wait, path):
    # The SDK retries a 429 only when told to by Stripe-Should-Retry: true; a 429 is
    # never stored under the idempotency key, so the retry runs for real.
    stripe.set_faults(fail_next=2, status=429)
    retrying = sdk_client(stripe, max_network_retries=2)

    if path == "v1":
        retrying.v1.billing.meter_events.create(v1_event())
    else:
        retrying.v2.billing.meter_event_session.create()

    assert stripe.faults()["fail_next"] == 0
    assert [call["status"] for call in stripe.calls()] == [429, 429, 200]


def test_a_v1_500_is_stored_under_its_idempotency_key_and_replayed(stripe, client):
    stripe.set_faults(fail_next=1, status=500)
    params, options = v1_event(), {"idempotency_key": "the-key"}

    for _ in range(3):
        with pytest.raises(stripe_sdk.APIError) as caught:
            client.v1.billing.meter_events.create(params, options)
        assert caught.value.http_status == 500

    assert caught.value.headers["Idempotent-Replayed"] == "true"
    assert stripe.meter_events() == []
    client.v1.billing.meter_events.create(params, {"idempotency_key": "another-key"})
    assert [e["identifier"] for e in stripe.meter_events()] == [params["identifier"]]


def test_a_v2_500_is_not_stored_so_a_retry_with_the_key_runs_again(stripe, client, no_retry_wait):
    # Stripe: "With API v2, retries don't repeat successful operations. Stripe retries
    # failed or partially failed work to completion."
    _, session = open_session(stripe, client)
    stripe.set_faults(fail_next=1, status=500)
    retrying = sdk_client(stripe, api_key=session.authentication_token, max_network_retries=1)

    retrying.v2.billing.meter_event_stream.create({"events": [v2_event()]})

    assert [call["status"] for call in stripe.calls("/v2/billing/meter_event_stream")] == [500, 200]
    assert len(stripe.meter_events("pending") + stripe.meter_events()) == 1


def test_injected_latency_delays_every_call(stripe):
    stripe.set_faults(latency_ms=300)
    impatient = sdk_client(stripe, http_client=stripe_sdk.RequestsClient(timeout=0.1))

    with pytest.raises(stripe_sdk.APIConnectionError):
        impatient.v1.billing.meters.list()

    started = time.monotonic()
    sdk_client(stripe).v1.billing.meters.list()
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("rule", "customers", "expected"),
    [
        (None, ("cus_same", "cus_same"), ["ok", "rate_limit"]),  # Stripe's rule, on by default
        (None, ("cus_one", "cus_two"), ["ok", "ok"]),
        (False, ("cus_same", "cus_same"), ["ok", "ok"]),
    ],
)
def test_one_concurrent_call_per_customer_and_meter(stripe, rule, customers, expected):
    stripe.create_customers(*customers)
    stripe.set_faults(latency_ms=300, **({} if rule is None else {"one_call_per_customer": rule}))
    start_together = threading.Barrier(len(customers))

    def send(customer: str) -> str:
        client = sdk_client(stripe)
        start_together.wait()
        try:
            client.v1.billing.meter_events.create(v1_event(customer))
        except stripe_sdk.RateLimitError as error:
            # The SDK sets .code only for some classes; the body's code is always on .error.
            return error.error.code
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(len(customers)) as pool:
        outcomes = list(pool.map(send, customers))

    assert sorted(outcomes) == expected
    assert len(stripe.meter_events()) == outcomes.count("ok")


# -- meters and summaries -------------------------------------------------------------------


def test_no_meter_is_created_on_first_use(stripe, client, streamer):
    with pytest.raises(stripe_sdk.InvalidRequestError):
        client.v1.billing.meter_events.create(v1_event(event_name="unmetered"))
    streamer.v2.billing.meter_event_stream.create({"events": [v2_event(event_name="unmetered")]})
    stripe.validate_now()

    assert [meter.event_name for meter in client.v1.billing.meters.list().data] == [EVENT_NAME]
    assert [e["error_code"] for e in stripe.meter_events("invalid")] == ["no_meter"]


def test_summaries_sum_the_values_of_a_customer_within_the_range(stripe, client):
    hour = (int(time.time()) // 3600 - 3) * 3600
    for customer, value, at in [
        ("cus_a", "1", hour + 10),
        ("cus_a", "2", hour + 3599),
        ("cus_a", "4", hour + 3600),
        ("cus_a", "8", hour + 7200),  # end_time is exclusive
        ("cus_b", "100", hour + 20),  # another customer
    ]:
        client.v1.billing.meter_events.create(v1_event(customer, value, timestamp=at))
    settle(stripe)

    [meter] = client.v1.billing.meters.list({"status": "active"}).data
    assert (meter.event_name, meter.default_aggregation.formula, meter.status) == (EVENT_NAME, "sum", "active")
    assert client.v1.billing.meters.retrieve(meter.id).to_dict() == meter.to_dict()

    window = {"customer": "cus_a", "start_time": hour, "end_time": hour + 7200}
    [total] = client.v1.billing.meters.event_summaries.list(meter.id, window).data
    assert total.object == "billing.meter_event_summary"
    assert (total.aggregated_value, total.start_time, total.end_time, total.meter) == (7, hour, hour + 7200, meter.id)

    hourly = client.v1.billing.meters.event_summaries.list(meter.id, {**window, "value_grouping_window": "hour"})
    assert [(s.start_time, s.aggregated_value) for s in hourly.data] == [(hour + 3600, 4.0), (hour, 3.0)]


def test_explicit_meter_uses_its_payload_keys_and_can_be_deactivated(stripe, client):
    meter = client.v1.billing.meters.create(
        {
            "display_name": "Tokens",
            "event_name": "tokens",
            "default_aggregation": {"formula": "sum"},
            "value_settings": {"event_payload_key": "tokens"},
        }
    )
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meters.create(
            {"display_name": "Again", "event_name": "tokens", "default_aggregation": {"formula": "sum"}}
        )
    assert caught.value.param == "event_name"

    at = (int(time.time()) // 60 - 1) * 60
    client.v1.billing.meter_events.create(
        {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_a", "tokens": "12"}, "timestamp": at}
    )
    settle(stripe)
    [summary] = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_a", "start_time": at, "end_time": at + 60}
    ).data
    assert summary.aggregated_value == 12

    client.v1.billing.meters.deactivate(meter.id)
    assert [m.id for m in client.v1.billing.meters.list({"status": "inactive"}).data] == [meter.id]
    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meter_events.create(
            {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_a", "tokens": "1"}}
        )
    assert caught.value.code == "archived_meter"

    with pytest.raises(stripe_sdk.InvalidRequestError) as caught:
        client.v1.billing.meters.retrieve("mtr_missing")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


# -- local endpoints --------------------------------------------------------------------------


def test_local_endpoints_list_events_set_faults_and_reset(stripe, client):
    stripe.create_customers("cus_1")
    client.v1.billing.meter_events.create(v1_event("cus_1", "3"))

    listed = requests.get(f"{stripe.url}/_local/meter_events", timeout=5).json()["data"]
    assert listed == stripe.meter_events()
    assert (listed[0]["customer"], listed[0]["value"], listed[0]["via"]) == ("cus_1", "3", "v1")

    changed = requests.post(f"{stripe.url}/_local/faults", json={"latency_ms": 5, "fail_next": 1}, timeout=5)
    assert changed.status_code == 200
    assert requests.get(f"{stripe.url}/_local/faults", timeout=5).json() == changed.json()
    assert (changed.json()["latency_ms"], changed.json()["fail_next"]) == (5, 1)
    refused = requests.post(f"{stripe.url}/_local/faults", json={"fail_nxt": 1}, timeout=5)
    assert refused.status_code == 400
    assert "fail_nxt" in refused.json()["error"]["message"]
    with pytest.raises(ValueError):
        stripe.set_faults(status=404)

    assert requests.post(f"{stripe.url}/_local/reset", timeout=5).status_code == 200
    assert stripe.meter_events() == []
    assert stripe.faults()["fail_next"] == 0
    assert client.v1.billing.meters.list().data == []
    assert client.v1.customers.list().data == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_module_runs_the_server_and_logs_each_request():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "local_stripe", "--port", str(port), "--validation-delay-seconds", "0.25"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOCAL_STRIPE_WEBHOOK_URL": "http://127.0.0.1:9/hooks", "LOCAL_STRIPE_WEBHOOK_SECRET": ""},
    )
    try:
        assert "listening on" in process.stderr.readline()
        answer = requests.get(f"http://127.0.0.1:{port}/_local/faults", timeout=5)
        assert answer.status_code == 200
        settings = answer.json()
        assert (settings["validation_delay_seconds"], settings["webhook_url"]) == (0.25, "http://127.0.0.1:9/hooks")
        assert settings["webhook_secret"] == "whsec_local_stripe"
        line = process.stderr.readline()
        while "/_local/faults" not in line and line:
            line = process.stderr.readline()
        assert '"GET /_local/faults HTTP/1.1" 200' in line
    finally:
        process.terminate()
        process.wait(timeout=5)
        process.stderr.close()
