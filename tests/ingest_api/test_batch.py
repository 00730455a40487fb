"""POST /api/billing/external-usage/batch: ``{"events": [...1 to 100 bodies...]}``.

Each event is judged on its own and answered in order, by ``index``: ``queued`` (new),
``duplicate`` (its ``idempotency_key`` was seen with the same body: the earlier id) or
``rejected`` (with ``error`` and, for field problems, ``details``). A body that is not an
object with a list of 1 to 100 events is refused as a whole and queues nothing.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.billing import BATCH_URL, OMIT
from tests.support.error_answers import SENTENCE, assert_error, assert_unauthorized


def results_of(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"results"}
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(results)))
    for result in results:
        if result["status"] == "rejected":
            assert set(result) <= {"index", "status", "error", "details"}, result
            assert SENTENCE.fullmatch(result["error"]), result
        else:
            assert set(result) == {"index", "id", "status"}, result
            assert result["status"] in ("queued", "duplicate")
            uuid.UUID(result["id"])
    return results


def detail_fields(result: dict) -> list[str]:
    return sorted(d["field"] for d in result.get("details", []))


def test_a_mixed_batch_is_judged_event_by_event(billing):
    keyed = billing.body(input_tokens=5) | {"idempotency_key": "k-1"}
    events = [
        billing.body(),  # 0 queued
        billing.body(input_tokens="12", extra=1),  # 1 rejected: two field problems
        42,  # 2 rejected: not an object
        billing.body(service_name="translation"),  # 3 rejected: unknown service
        keyed,  # 4 queued
        dict(reversed(list(keyed.items()))),  # 5 duplicate of 4 (same object, other order)
        keyed | {"input_tokens": 6},  # 6 rejected: k-1 with another body
        billing.body() | {"idempotency_key": ""},  # 7 rejected: invalid key
        billing.body(user_id=OMIT),  # 8 rejected: missing field
        billing.body(output_tokens=0) | {"idempotency_key": "k-2"},  # 9 queued
    ]
    results = results_of(billing.post_batch(events))

    assert [r["status"] for r in results] == [
        "queued", "rejected", "rejected", "rejected", "queued", "duplicate", "rejected", "rejected", "rejected", "queued",
    ]
    assert detail_fields(results[1]) == ["extra", "input_tokens"]
    assert "details" not in results[2]
    assert detail_fields(results[3]) == ["service_name"]
    assert results[5]["id"] == results[4]["id"]
    assert detail_fields(results[7]) == ["idempotency_key"]
    assert detail_fields(results[8]) == ["user_id"]

    queued = billing.queued()
    assert [str(e.id) for e in queued] == [results[i]["id"] for i in (0, 4, 9)]
    assert [e.idempotency_key for e in queued] == [None, "k-1", "k-2"]
    assert {e.caller_user_id for e in queued} == {billing.caller.id}
    assert [e.input_tokens for e in queued] == [1200, 5, 1200]


def test_idempotency_keys_hold_across_batches(billing):
    first = billing.body(input_tokens=7) | {"idempotency_key": "across"}
    (earlier,) = results_of(billing.post_batch([first]))
    assert earlier["status"] == "queued"

    again, changed = results_of(billing.post_batch([first, first | {"input_tokens": 8}]))
    assert again == {"index": 0, "id": earlier["id"], "status": "duplicate"}
    assert changed["status"] == "rejected"
    (event,) = billing.queued()
    assert str(event.id) == earlier["id"]


def test_a_batch_key_of_another_caller_is_another_event(billing, factory):
    event = billing.body() | {"idempotency_key": "theirs-and-mine"}
    other = factory.app_password(factory.superadmin(billing.organization))
    (mine,) = results_of(billing.post_batch([event]))
    (theirs,) = results_of(billing.post_batch([event], token=other))
    assert mine["status"] == theirs["status"] == "queued"
    assert mine["id"] != theirs["id"]
    assert len(billing.queued()) == 2


def test_100_events_are_accepted(billing):
    events = [billing.body(input_tokens=i) for i in range(100)]
    results = results_of(billing.post_batch(events))
    assert {r["status"] for r in results} == {"queued"}
    queued = billing.queued()
    assert [str(e.id) for e in queued] == [r["id"] for r in results]
    assert [e.input_tokens for e in queued] == list(range(100))
    assert len({e.id for e in queued}) == 100


def test_a_batch_where_every_event_is_rejected_is_200_and_queues_nothing(billing):
    results = results_of(billing.post_batch([billing.body(model_name="nope"), [], None]))
    assert [r["status"] for r in results] == ["rejected"] * 3
    billing.assert_nothing_queued()


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"events": []}, ["events"]),
        ({"events": "FILL-101"}, ["events"]),
        ({"events": {"0": {}}}, ["events"]),
        ({"events": "not a list"}, ["events"]),
        ({"events": None}, ["events"]),
        ({}, ["events"]),
        ({"events": "FILL-1", "dry_run": True}, ["dry_run"]),
    ],
    ids=["0-events", "101-events", "object", "string", "null", "missing", "unknown-field"],
)
def test_a_batch_that_is_not_1_to_100_events_is_422_as_a_whole(billing, body, fields):
    if isinstance(body.get("events"), str) and body["events"].startswith("FILL-"):
        body = body | {"events": [billing.body()] * int(body["events"].removeprefix("FILL-"))}
    response = billing.client.post(BATCH_URL, json=body, headers=billing.headers())
    assert_error(response, 422, fields=fields)
    billing.assert_nothing_queued()


@pytest.mark.parametrize("data", [b"[]", b'[{"events": []}]', b'"events"', b"7", b"null", b"{", b"\xff"])
def test_a_batch_body_that_is_not_a_json_object_is_400(billing, data):
    response = billing.client.post(BATCH_URL, data=data, headers=billing.headers() | {"Content-Type": "application/json"})
    assert_error(response, 400)
    billing.assert_nothing_queued()


def test_a_batch_needs_json_auth_and_a_superadmin(billing, factory):
    data = json.dumps({"events": [billing.body()]})
    assert_error(billing.client.post(BATCH_URL, data=data, headers=billing.headers() | {"Content-Type": "text/plain"}), 415)
    assert_unauthorized(billing.client.post(BATCH_URL, data=data, headers={"Content-Type": "application/json"}))
    member = factory.user()
    factory.membership(member, billing.organization, "member")
    assert_error(billing.post_batch([billing.body()], token=factory.jwt(member)), 403)
    billing.assert_nothing_queued()
