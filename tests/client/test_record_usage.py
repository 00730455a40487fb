"""``record_usage`` and ``get_usage`` on the wire: one Idempotency-Key per event, kept
on every retry; retries on 503, dropped connections and timeouts, honouring
``Retry-After``, within the deadline; refusals raised with what the service said."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import socket
import time
import uuid
from decimal import Decimal

import pytest

from agent700_billing import Accepted, ApiError, DeadlineExceeded, ErrorDetail, NotFound, RetryPolicy
from agent700_billing.retry import retry_after_seconds
from tests.client.stand_in import UNKNOWN_MODEL, Drop, Hang, Reply, Unknown

USER = uuid.UUID("11111111-1111-4111-8111-111111111111")
ORGANIZATION = uuid.UUID("22222222-2222-4222-8222-222222222222")


def event(**changes) -> dict:
    fields = dict(
        user_id=USER, organization_id=ORGANIZATION, model_name="gpt-4o-mini",
        input_tokens=1200, output_tokens=340, service_name="transcription",
    )
    return fields | changes


def unavailable(retry_after: str = "0") -> Reply:
    return Reply(503, {"error": "The billing queue is unavailable; nothing was recorded. Retry later."}, {"Retry-After": retry_after})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_event_is_sent_as_the_contract_says_and_accepted(service, connect):
    occurred_at = dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))

    accepted = connect().record_usage(**event(source="voice", occurred_at=occurred_at))

    (request,) = service.posted()
    assert request.headers["authorization"] == "Bearer app_a7_stand_in_token"
    assert request.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[\x20-\x7e]{1,255}", request.headers["idempotency-key"])
    assert request.body == {
        "user_id": str(USER), "organization_id": str(ORGANIZATION), "model_name": "gpt-4o-mini",
        "input_tokens": 1200, "output_tokens": 340, "service_name": "transcription",
        "source": "voice", "occurred_at": "2025-01-31T09:30:00+02:00",
    }
    (stored,) = service.events.values()
    assert accepted == Accepted(id=stored.id, status="queued", replayed=False, idempotency_key=request.headers["idempotency-key"])


def test_each_call_is_a_new_event_with_a_key_of_its_own(service, connect):
    client = connect()
    first, second = client.record_usage(**event()), client.record_usage(**event())

    assert first.id != second.id
    assert first.idempotency_key != second.idempotency_key
    assert len(service.events) == 2


def test_the_callers_own_key_is_sent_and_a_replay_returns_the_same_event(service, connect):
    client = connect()
    first = client.record_usage(**event(), idempotency_key="order-42/line-1")
    again = client.record_usage(**event(), idempotency_key="order-42/line-1")

    assert [r.headers["idempotency-key"] for r in service.posted()] == ["order-42/line-1"] * 2
    assert (first.replayed, again.replayed) == (False, True)
    assert again.id == first.id
    assert service.accepted_keys() == {"order-42/line-1": 1}


def test_503_is_retried_with_the_same_key_and_body_after_retry_after(service, connect):
    service.then(unavailable(retry_after="1"))

    accepted = connect().record_usage(**event())

    first, second = service.posted()
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == accepted.idempotency_key
    assert first.body == second.body
    assert second.at - first.at >= 1.0, "Retry-After: 1 was not honoured"
    assert (accepted.replayed, service.accepted_keys()) == (False, {accepted.idempotency_key: 1})


LOST_ANSWERS = {"unknown-503": Unknown, "dropped": Drop, "timed-out": Hang}


@pytest.mark.parametrize("fault", LOST_ANSWERS.values(), ids=LOST_ANSWERS.keys())
@pytest.mark.parametrize("accepted_before", [True, False], ids=["accepted", "not-accepted"])
def test_an_attempt_unanswered_is_sent_again_and_billed_once(service, connect, fault, accepted_before):
    """Whether or not the service took the event before its answer was lost, the retry
    with the same key ends as one event: the lost attempt's (replayed), or a new one."""
    service.then(fault(accept=accepted_before))

    accepted = connect(timeout=0.5).record_usage(**event())

    assert len(service.posted()) == 2
    (stored,) = service.events.values()
    assert (accepted.id, accepted.replayed) == (stored.id, accepted_before)
    assert service.accepted_keys() == {accepted.idempotency_key: 1}


def test_several_faults_in_a_row_are_retried_until_accepted(service, connect):
    service.then(unavailable(), Drop(accept=False), Reply(502, {"error": "Bad gateway."}), Unknown(accept=True), Drop(accept=False), Reply(504, None))

    accepted = connect().record_usage(**event())

    assert len({r.headers["idempotency-key"] for r in service.posted()}) == 1
    assert len(service.posted()) == 7
    assert service.accepted_keys() == {accepted.idempotency_key: 1}


@pytest.mark.parametrize(
    "status, body, headers",
    [
        (401, {"error": "Missing or invalid credentials."}, {"WWW-Authenticate": "Bearer"}),
        (403, {"error": "The caller is not a superadmin."}, {}),
        (409, {"error": "This Idempotency-Key was already used with a different body."}, {}),
        (413, {"error": "The request body is larger than 64 KiB."}, {}),
        (500, {"error": "Internal server error."}, {}),
    ],
)
def test_a_refusal_is_raised_at_once_with_what_the_service_said(service, connect, status, body, headers):
    service.then(Reply(status, body, headers))

    with pytest.raises(ApiError) as raised:
        connect().record_usage(**event())

    assert (raised.value.status, raised.value.error, raised.value.details) == (status, body["error"], ())
    assert str(raised.value) == f"HTTP {status}: {body['error']}"
    assert len(service.posted()) == 1


def test_a_422_carries_the_details(service, connect):
    with pytest.raises(ApiError) as raised:
        connect().record_usage(**event(model_name=UNKNOWN_MODEL))

    assert raised.value.status == 422
    assert raised.value.error == "The usage event is invalid."
    assert raised.value.details == (ErrorDetail("model_name", f"No price for model {UNKNOWN_MODEL}."),)
    assert "model_name: No price for model" in str(raised.value)


def test_a_wrong_token_is_a_401_not_retried(service, connect):
    with pytest.raises(ApiError) as raised:
        connect(token="app_a7_wrong").record_usage(**event())

    assert raised.value.status == 401
    assert len(service.posted()) == 1


def test_an_answer_that_is_not_json_is_still_reported(service, connect):
    service.then(Reply(400, "not json at all"))

    with pytest.raises(ApiError) as raised:
        connect().record_usage(**event())

    assert (raised.value.status, raised.value.error) == (400, '"not json at all"')


def test_the_deadline_bounds_the_retries_and_names_the_key(service, connect):
    service.then(*[Unknown(accept=False, retry_after="1")] * 10)
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded) as raised:
        connect(deadline=2.5).record_usage(**event(), idempotency_key="retry-me")

    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5
    assert raised.value.attempts == len(service.posted()) in (2, 3)
    assert raised.value.possibly_accepted and raised.value.idempotency_key == "retry-me"
    assert raised.value.attempted_ids and all(isinstance(i, uuid.UUID) for i in raised.value.attempted_ids)
    assert isinstance(raised.value.last_error, ApiError) and raised.value.last_error.outcome_unknown
    assert "retry-me" in str(raised.value)


def test_a_retry_after_past_the_deadline_gives_up_at_once(service, connect):
    service.then(unavailable(retry_after="30"))
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded) as raised:
        connect(deadline=5).record_usage(**event())

    assert time.monotonic() - started < 1.0
    assert raised.value.attempts == 1
    assert not raised.value.possibly_accepted  # the service's plain 503: nothing accepted


def test_a_service_that_is_not_there_is_retried_until_the_deadline(connect):
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded) as raised:
        connect(f"http://127.0.0.1:{free_port()}", deadline=1.0).record_usage(**event())

    assert time.monotonic() - started < 1.5
    assert raised.value.attempts > 3
    assert not raised.value.possibly_accepted  # no connection was ever made


def test_the_waits_grow_and_stay_within_the_policy(service, connect):
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, multiplier=2.0)
    service.then(*[Drop(accept=False)] * 5)

    connect(retry=policy).record_usage(**event())

    times = [request.at for request in service.posted()]
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Drawn from [ceiling/2, ceiling] with ceilings 0.05, 0.1, 0.2, 0.2, 0.2.
    for wait, ceiling in zip(waits, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True):
        assert ceiling / 2 <= wait < ceiling + 0.1, waits


def test_retry_after_as_an_http_date():
    now = dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC)
    assert retry_after_seconds("Fri, 31 Jan 2025 09:30:07 GMT", now) == 7.0
    assert retry_after_seconds("Fri, 31 Jan 2025 09:29:00 GMT", now) == 0.0
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_naive_time_is_refused_before_anything_is_sent(service, connect):
    with pytest.raises(ValueError, match="timezone-aware"):
        connect().record_usage(**event(occurred_at=dt.datetime(2025, 1, 31, 9, 30)))
    assert service.requests == []


def test_get_usage_reads_money_as_decimal_and_times_as_aware_datetimes(service, connect):
    client = connect()
    accepted = client.record_usage(**event())
    service.then(unavailable(), Drop(accept=False))

    record = client.get_usage(accepted.id)

    assert (record.id, record.status, record.input_tokens) == (accepted.id, "reported", 1200)
    assert record.service_cost == Decimal("0.000384000000000000")
    assert record.agent700_cost == Decimal("0.000768000000000001")
    assert record.occurred_at == dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC)
    assert record.stripe.value == 768
    assert record.stripe.reported_at == dt.datetime(2025, 1, 31, 9, 30, 2, 123456, tzinfo=dt.UTC)
    assert len([r for r in service.requests if r.method == "GET"]) == 3


def test_get_usage_of_an_event_never_accepted_is_not_found(service, connect):
    with pytest.raises(NotFound) as raised:
        connect().get_usage(uuid.uuid4())
    assert (raised.value.status, raised.value.error) == (404, "No usage event with this id.")


def test_the_client_closes_as_a_context_manager(service, connect):
    client = connect()
    with client as same:
        assert same is client
        same.record_usage(**event())
    with pytest.raises(RuntimeError):
        client.record_usage(**event())
