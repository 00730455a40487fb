"""``record_usage_batch``: re-sends only what the service did not settle, each event
with its own key; never re-sends an accepted event; reports rejected ones, unretried."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from agent700_billing import ApiError, BatchIncomplete, BatchItemResult, DeadlineExceeded, ErrorDetail, UsageEvent
from tests.client.stand_in import BATCH_PATH, UNKNOWN_MODEL, Drop, Hang, Reply, Unknown

USER = uuid.UUID("11111111-1111-4111-8111-111111111111")
ORGANIZATION = uuid.UUID("22222222-2222-4222-8222-222222222222")


def events(count: int, **changes) -> list[UsageEvent]:
    fields = dict(user_id=USER, organization_id=ORGANIZATION, model_name="gpt-4o-mini", output_tokens=7, service_name="transcription")
    return [UsageEvent(**fields | changes, input_tokens=index) for index in range(count)]


def sent(request) -> list[int]:
    """The events of a batch request, by their input_tokens (each test event's number)."""
    return [item["input_tokens"] for item in request.body["events"]]


def assert_each_accepted_once(service, results: list[BatchItemResult]) -> None:
    accepted = [r for r in results if r.accepted]
    assert service.accepted_keys() == {r.idempotency_key: 1 for r in accepted}
    assert {r.id for r in accepted} == set(service.events)


def test_accepted_and_rejected_in_one_answer_are_settled_without_a_retry(service, connect):
    batch = events(3)
    batch[1] = dataclasses.replace(batch[1], model_name=UNKNOWN_MODEL)

    results = connect().record_usage_batch(batch)

    assert len(service.posted(BATCH_PATH)) == 1
    assert [(r.index, r.status) for r in results] == [(0, "queued"), (1, "rejected"), (2, "queued")]
    assert results[1].id is None and results[1].error == "The usage event is invalid."
    assert results[1].details == (ErrorDetail("model_name", f"No price for model {UNKNOWN_MODEL}."),)
    keys = [item["idempotency_key"] for item in service.posted(BATCH_PATH)[0].body["events"]]
    assert [r.idempotency_key for r in results] == keys and len(set(keys)) == 3
    assert_each_accepted_once(service, results)


def test_the_callers_own_keys_are_kept(service, connect):
    batch = [dataclasses.replace(e, idempotency_key=f"line-{i}") for i, e in enumerate(events(2))]

    results = connect().record_usage_batch(batch)

    assert [item["idempotency_key"] for item in service.posted(BATCH_PATH)[0].body["events"]] == ["line-0", "line-1"]
    assert [r.idempotency_key for r in results] == ["line-0", "line-1"]


@pytest.mark.parametrize("accept", [True, False], ids=["accepted", "not-accepted"])
def test_an_unknown_outcome_resends_only_the_unknown_events_with_their_keys(service, connect, accept):
    batch = events(4)
    batch[2] = dataclasses.replace(batch[2], model_name=UNKNOWN_MODEL)
    service.then(Unknown(accept=accept))

    results = connect().record_usage_batch(batch)

    first, second = service.posted(BATCH_PATH)
    assert (sent(first), sent(second)) == ([0, 1, 2, 3], [0, 1, 3])  # the rejected one is not re-sent
    keys = {item["input_tokens"]: item["idempotency_key"] for item in first.body["events"]}
    assert {item["input_tokens"]: item["idempotency_key"] for item in second.body["events"]} == {n: keys[n] for n in (0, 1, 3)}
    assert [r.status for r in results] == ["duplicate" if accept else "queued"] * 2 + ["rejected", "duplicate" if accept else "queued"]
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert_each_accepted_once(service, results)


@pytest.mark.parametrize("fault", [Drop(accept=True), Hang(accept=True), Drop(accept=False), Reply(503, {"error": "Unavailable."}, {"Retry-After": "0"})],
                         ids=["dropped-accepted", "timed-out-accepted", "dropped", "plain-503"])
def test_an_unanswered_batch_is_sent_again_whole_with_the_same_keys(service, connect, fault):
    service.then(fault)

    results = connect(timeout=0.5).record_usage_batch(events(5))

    first, second = service.posted(BATCH_PATH)
    assert first.body == second.body
    assert all(r.accepted for r in results)
    assert_each_accepted_once(service, results)


def test_more_than_100_events_go_in_several_requests_and_an_accepted_chunk_is_never_resent(service, connect):
    # Chunk 1 answered; chunk 2's answer lost after it was accepted; chunk 3 first unknown.
    service.then(None, Drop(accept=True), None, Unknown(accept=False), None)

    results = connect().record_usage_batch(events(250))

    requests = service.posted(BATCH_PATH)
    assert [len(r.body["events"]) for r in requests] == [100, 100, 100, 50, 50]
    assert sent(requests[0]) == list(range(100))
    assert sent(requests[1]) == sent(requests[2]) == list(range(100, 200))
    assert sent(requests[3]) == sent(requests[4]) == list(range(200, 250))
    assert [r.index for r in results] == list(range(250))
    assert [r.status for r in results[100:200]] == ["duplicate"] * 100
    assert all(r.status == "queued" for r in results[:100] + results[200:])
    assert_each_accepted_once(service, results)


def test_the_deadline_reports_what_was_settled_and_what_to_send_again(service, connect):
    batch = events(150)
    # Chunk 1 accepted; chunk 2 never gets a definite answer before the deadline.
    service.then(None, *[Unknown(accept=True, retry_after="1")] * 10)

    with pytest.raises(BatchIncomplete) as raised:
        connect(deadline=1.5).record_usage_batch(batch)

    incomplete = raised.value
    assert isinstance(incomplete.__cause__, DeadlineExceeded)
    assert [r.index for r in incomplete.results] == list(range(100))
    assert incomplete.unfinished_indexes == list(range(100, 150))
    assert [e.input_tokens for e in incomplete.unfinished] == list(range(100, 150))
    assert all(e.idempotency_key for e in incomplete.unfinished)

    # The exactly-once recipe: send the unfinished ones again, as they are (keys kept).
    service.script.clear()  # the service is well again
    again = connect().record_usage_batch(incomplete.unfinished)

    assert [r.status for r in again] == ["duplicate"] * 50
    assert_each_accepted_once(service, incomplete.results + again)


def test_a_refusal_of_the_whole_batch_stops_it_and_keeps_what_was_settled(service, connect):
    service.then(None, Reply(401, {"error": "Missing or invalid credentials."}, {"WWW-Authenticate": "Bearer"}))

    with pytest.raises(BatchIncomplete) as raised:
        connect().record_usage_batch(events(120))

    assert isinstance(raised.value.__cause__, ApiError) and raised.value.__cause__.status == 401
    assert len(raised.value.results) == 100 and raised.value.unfinished_indexes == list(range(100, 120))
    assert len(service.posted(BATCH_PATH)) == 2


def test_an_empty_batch_sends_nothing(service, connect):
    assert connect().record_usage_batch([]) == []
    assert service.requests == []


def test_a_body_near_the_size_limit_is_split_before_sending(service, connect):
    batch = events(100, source="s" * 64, model_name="m" * 200, service_name="x" * 200)

    results = connect().record_usage_batch(batch)

    requests = service.posted(BATCH_PATH)
    assert len(requests) == 2 and sum(len(r.body["events"]) for r in requests) == 100
    assert all(len(json.dumps(r.body)) < 64 * 1024 for r in requests)
    assert [r.index for r in results] == list(range(100))
