"""Idempotency-Key on POST /api/billing/external-usage.

The same caller sending the same key with the same body gets the same event id back
(202 the first time, 200 after, with the event's current status) and is billed once,
however many times and however concurrently it retries; the same key with a different
body is a 409. "The same body" is the same JSON object, however it is written.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from tests.support.api_caller import record_as_worker
from tests.support.billing import URL, forget_idempotency_claims
from tests.support.error_answers import assert_error, assert_unauthorized
from tests.support.operator_commands import OperatorCliRunner

THREADS = 20


def location(event_id: str) -> str:
    return f"{URL}/{event_id}"


def test_a_replay_returns_the_same_event_with_200_and_queues_nothing_more(billing):
    first = billing.post(idempotency_key="order-17")
    assert first.status_code == 202, first.get_json()
    event_id = first.get_json()["id"]
    assert first.get_json() == {"id": event_id, "status": "queued"}
    assert first.headers["Location"] == location(event_id)

    for _ in range(3):
        again = billing.post(idempotency_key="order-17")
        assert again.status_code == 200, again.get_json()
        assert again.get_json() == {"id": event_id, "status": "queued"}
        assert again.headers["Location"] == location(event_id)

    (event,) = billing.queued()
    assert str(event.id) == event_id
    assert event.idempotency_key == "order-17"


def test_a_replay_reports_the_events_current_status(billing, settings):
    first = billing.post(idempotency_key="order-18")
    assert first.status_code == 202
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, status="reported")

    again = billing.post(idempotency_key="order-18")
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == {"id": str(event.id), "status": "reported"}
    assert len(billing.queued()) == 1


def test_the_same_json_object_written_differently_is_the_same_body(billing):
    body = billing.body(source="sdk", occurred_at=None)
    compact = json.dumps(body, separators=(",", ":"))
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=3)
    escaped = json.dumps(body, ensure_ascii=True).replace('"sdk"', '"\\u0073dk"')
    headers = billing.headers(idempotency_key="written-differently") | {"Content-Type": "application/json"}

    first = billing.client.post(URL, data=compact, headers=headers)
    assert first.status_code == 202, first.get_json()
    for data in (reordered, "\n\t " + escaped + " \n"):
        again = billing.client.post(URL, data=data, headers=headers)
        assert again.status_code == 200, (data, again.get_json())
        assert again.get_json()["id"] == first.get_json()["id"]
    assert len(billing.queued()) == 1


def test_the_same_key_with_a_different_body_is_409_and_queues_nothing(billing):
    first = billing.post(billing.body(input_tokens=10), idempotency_key="order-19")
    assert first.status_code == 202

    for different in (billing.body(input_tokens=11), billing.body(input_tokens=10, source="other")):
        assert_error(billing.post(different, idempotency_key="order-19"), 409)
    assert len(billing.queued()) == 1

    # The key still belongs to the first body.
    again = billing.post(billing.body(input_tokens=10), idempotency_key="order-19")
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert len(billing.queued()) == 1


def test_the_same_key_from_another_caller_is_another_event(billing, factory):
    other_caller = factory.superadmin(billing.organization)
    mine = billing.post(idempotency_key="shared-key")
    theirs = billing.post(token=factory.app_password(other_caller), idempotency_key="shared-key")
    assert mine.status_code == theirs.status_code == 202
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert sorted(str(e.caller_user_id) for e in billing.queued()) == sorted([str(billing.caller.id), str(other_caller.id)])


def test_the_caller_is_the_user_whichever_credential_it_sends(billing, factory):
    # The JWT and an App Password of one user are one caller: a retry that switches
    # credential is still a retry.
    first = billing.post(token=billing.app_password, idempotency_key="switch")
    again = billing.post(token=billing.jwt, idempotency_key="switch")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert len(billing.queued()) == 1


def test_without_a_key_every_post_is_a_new_event(billing):
    first, second = billing.post(), billing.post()
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] != second.get_json()["id"]
    assert {str(e.id) for e in billing.queued()} == {first.get_json()["id"], second.get_json()["id"]}


def _post_at_once(billing, app, bodies: list[dict], key: str):
    """POST each body from its own thread and test client, all released together."""
    barrier = threading.Barrier(len(bodies))

    def post(body):
        client = app.test_client()
        barrier.wait(timeout=10)
        return billing.post(body, idempotency_key=key, client=client)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


@pytest.mark.usefixtures("committed_database")  # concurrent callers, each with a connection of its own
def test_concurrent_retries_of_one_key_make_exactly_one_event(billing, app):
    responses = _post_at_once(billing, app, [billing.body()] * THREADS, "concurrent")

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: 1, 200: THREADS - 1}, [r.get_json() for r in responses]
    ids = {r.get_json()["id"] for r in responses}
    assert len(ids) == 1
    (event,) = billing.queued()
    assert {str(event.id)} == ids
    assert {r.headers["Location"] for r in responses} == {location(str(event.id))}


@pytest.mark.usefixtures("committed_database")  # concurrent callers, each with a connection of its own
def test_concurrent_different_bodies_under_one_key_make_one_event_and_409s(billing, app):
    bodies = [billing.body(input_tokens=i % 2) for i in range(THREADS)]
    responses = _post_at_once(billing, app, bodies, "concurrent-conflict")

    (event,) = billing.queued()
    for body, response in zip(bodies, responses, strict=True):
        if body["input_tokens"] == event.input_tokens:
            assert response.status_code in (200, 202), response.get_json()
            assert response.get_json()["id"] == str(event.id)
        else:
            assert_error(response, 409)
    assert Counter(r.status_code for r in responses)[202] == 1


def test_a_replay_after_the_keys_24_hours_in_redis_is_the_same_event_not_a_new_one(billing, settings):
    first = billing.post(idempotency_key="order-24h")
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, status="reported")
    forget_idempotency_claims(billing.broker_url)

    again = billing.post(idempotency_key="order-24h")
    other = billing.post(billing.body(input_tokens=99), idempotency_key="order-24h")

    assert again.status_code == 200, again.get_json()
    assert again.get_json() == {"id": first.get_json()["id"], "status": "reported"}
    assert again.headers["Location"] == location(first.get_json()["id"])
    assert_error(other, 409)
    assert len(billing.queued()) == 1


def test_a_row_recorded_before_fingerprints_were_kept_answers_its_key_as_the_same_event(billing, settings):
    billing.post(idempotency_key="order-old")
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, idempotency_fingerprint=None)
    forget_idempotency_claims(billing.broker_url)

    again = billing.post(billing.body(input_tokens=3), idempotency_key="order-old")

    assert again.status_code == 200 and again.get_json()["id"] == str(event.id), again.get_json()
    assert len(billing.queued()) == 1


def test_a_revoked_app_password_replaying_a_key_kept_in_postgresql_gets_401(billing, settings, app):
    billing.post(idempotency_key="order-revoked")
    (event,) = billing.queued()
    record_as_worker(settings, billing, event)
    forget_idempotency_claims(billing.broker_url)
    revoke = OperatorCliRunner(app).invoke(
        args=["app-passwords", "revoke", "--user", str(billing.caller.id), "--name", "ingest"]
    )
    assert revoke.exit_code == 0, revoke.output

    body = assert_unauthorized(billing.post(idempotency_key="order-revoked"))

    assert str(event.id) not in json.dumps(body)


class _Queries:
    """The SQL statements this process sends while in the block."""

    def __init__(self):
        self.statements: list[str] = []

    def _count(self, conn, cursor, statement, *args) -> None:
        # The test's rolled-back transaction brackets each block in savepoints: not queries.
        if not statement.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
            self.statements.append(statement)

    def __enter__(self):
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc_info) -> None:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._count)


def test_an_unkeyed_event_costs_no_postgresql_query_and_a_keyed_one_a_single_one(reconfigure):
    billing, _ = reconfigure(catalog_cache_seconds=60.0)  # as in production, not the tests' 0
    assert billing.post().status_code == 202  # warms the caller and catalog caches
    with _Queries() as unkeyed:
        assert billing.post().status_code == 202
    with _Queries() as keyed:
        assert billing.post(idempotency_key="order-q").status_code == 202

    assert unkeyed.statements == []
    assert len(keyed.statements) == 1 and "idempotency_key" in keyed.statements[0], keyed.statements
