"""Idempotency keys as Stripe stores them. Per call: authentication, then the key, then an
injected fault, then the endpoint. v1 keeps the first answer once the endpoint began (a
500 included) for 24 h; it never keeps an authentication failure, a 429, or a refusal of
the parameters. v2 keeps successes only: a failed call runs again on retry."""

from __future__ import annotations

import pytest
import requests
import stripe as stripe_sdk

from tests.support.stripe_sdk import API_KEY, EVENT_NAME, open_session, sdk_client, v1_event, v2_event

pytestmark = pytest.mark.usefixtures("account")

DAY = 24 * 3600


def _post_v1_event(stripe, key: str, api_key: str = API_KEY, **payload: str) -> requests.Response:
    form = {"event_name": EVENT_NAME, "payload[stripe_customer_id]": "cus_a", "payload[value]": "1"}
    form.update({f"payload[{name}]": value for name, value in payload.items()})
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    return requests.post(f"{stripe.url}/v1/billing/meter_events", data=form, headers=headers, timeout=5)


def test_a_failed_authentication_is_not_stored_under_the_key(stripe):
    refused = _post_v1_event(stripe, "key-1", api_key="pk_test_wrong")
    accepted = _post_v1_event(stripe, "key-1")

    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert "Idempotent-Replayed" not in accepted.headers


def test_an_injected_fault_comes_after_authentication(stripe):
    stripe.set_faults(fail_next=1, status=500)

    assert _post_v1_event(stripe, "key-1", api_key="pk_test_wrong").status_code == 401
    assert stripe.faults()["fail_next"] == 1


def test_a_v1_answer_that_began_is_replayed_even_a_refusal(stripe):
    first = _post_v1_event(stripe, "key-1", stripe_customer_id="cus_unknown")
    stripe.create_customers("cus_unknown")
    again = _post_v1_event(stripe, "key-1", stripe_customer_id="cus_unknown")

    assert (first.status_code, again.status_code) == (400, 400)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert stripe.meter_events() == []


def test_a_refusal_of_the_parameters_is_not_stored(stripe):
    form = {"event_name": EVENT_NAME}  # no payload: refused before the endpoint runs
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "key-1"}
    refused = requests.post(f"{stripe.url}/v1/billing/meter_events", data=form, headers=headers, timeout=5)
    # The same key with the corrected parameters is a first request, not a mismatch.
    accepted = _post_v1_event(stripe, "key-1")

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "parameter_missing")
    assert accepted.status_code == 200


def test_a_429_is_not_stored(stripe):
    stripe.set_faults(fail_next=1, status=429)

    assert _post_v1_event(stripe, "key-1").status_code == 429
    assert _post_v1_event(stripe, "key-1").status_code == 200


def test_a_v1_500_is_replayed_to_every_retry_with_its_key(stripe):
    stripe.set_faults(fail_next=1, status=500)

    answers = [_post_v1_event(stripe, "key-1") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [500, 500, 500]
    assert [answer.headers.get("Idempotent-Replayed") for answer in answers] == [None, "true", "true"]
    assert {answer.headers["Stripe-Should-Retry"] for answer in answers} == {"false"}
    assert stripe.meter_events() == []


def test_a_key_reused_with_other_parameters_is_an_idempotency_error(stripe, client):
    client.v1.billing.meter_events.create(v1_event(), {"idempotency_key": "key-1"})

    with pytest.raises(stripe_sdk.IdempotencyError) as caught:
        client.v1.billing.meter_events.create(v1_event(), {"idempotency_key": "key-1"})

    assert caught.value.http_status == 400
    assert caught.value.json_body["error"]["type"] == "idempotency_error"


def test_a_stored_answer_expires_after_24_hours(stripe, client):
    params, options = v1_event(), {"idempotency_key": "key-1"}
    client.v1.billing.meter_events.create(params, options)

    stripe.advance_clock(DAY - 60)
    replayed = client.v1.billing.meter_events.create(params, options)
    stripe.advance_clock(60)
    # Run again, and the identifier is free again too: a retry a day later bills twice.
    rerun = client.v1.billing.meter_events.create(params, options)

    assert replayed.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in rerun.last_response.headers
    assert len(stripe.meter_events()) == 2


def test_keys_are_scoped_per_account(stripe):
    mine = _post_v1_event(stripe, "key-1")
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "key-1", "Stripe-Account": "acct_other"}
    theirs = requests.post(f"{stripe.url}/v1/customers", data={"name": "Other"}, headers=headers, timeout=5)

    assert (mine.status_code, theirs.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in theirs.headers


def test_a_v2_success_is_replayed_but_a_failure_runs_again(stripe, client):
    _, session = open_session(stripe, client)
    headers = {"Authorization": f"Bearer {session.authentication_token}", "Idempotency-Key": "stream-1"}
    body = {"events": [v2_event()]}
    stripe.set_faults(fail_next=1, status=500)

    def send() -> requests.Response:
        return requests.post(f"{stripe.url}/v2/billing/meter_event_stream", json=body, headers=headers, timeout=5)

    failed, succeeded, replayed = send(), send(), send()

    assert [failed.status_code, succeeded.status_code, replayed.status_code] == [500, 200, 200]
    assert "Idempotent-Replayed" not in succeeded.headers
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert len(stripe.meter_events("pending")) + len(stripe.meter_events()) == 1


def test_the_sdks_own_retry_of_a_v1_500_gets_the_stored_500(stripe, monkeypatch):
    monkeypatch.setattr(stripe_sdk.HTTPClient, "INITIAL_DELAY", 0.001)
    stripe.set_faults(fail_next=1, status=500)
    retrying = sdk_client(stripe, max_network_retries=3)

    with pytest.raises(stripe_sdk.APIError):
        retrying.v1.billing.meter_events.create(v1_event())

    # Stripe-Should-Retry: false - the SDK does not retry what could only be replayed.
    assert [call["status"] for call in stripe.calls()] == [500]
    assert stripe.meter_events() == []


def test_the_kind_setting_leaves_an_injected_500_unstored(stripe):
    stripe.set_faults(fail_next=1, status=500, store_injected_failures=False)

    failed, retried = _post_v1_event(stripe, "key-1"), _post_v1_event(stripe, "key-1")

    assert (failed.status_code, failed.headers["Stripe-Should-Retry"], retried.status_code) == (500, "true", 200)
