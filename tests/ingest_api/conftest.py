"""What the ingest endpoint's suites share: the billable world with a test client of the
app (``billing``: ``tests.support.billing.build_world``, one organization, ``gpt-4o-mini``),
request helpers, the intake stream as the tests read it, and the shape of an error answer.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from shared import intake, models
from shared.usage_event import AcceptedUsageEvent
from tests.support.billing import BATCH_URL, URL, World, build_world, log_row, store

# "<one readable sentence>": starts with a capital, ends with a full stop, one line.
SENTENCE = re.compile(r"[A-Z][^\n]*[.!?]")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def queued_events(broker_url: str) -> list[AcceptedUsageEvent]:
    """Every event on the intake stream, oldest first, as the workers will read them."""
    client = redis.Redis.from_url(broker_url)
    try:
        entries = client.xrange(intake.STREAM)
    finally:
        client.close()
    return [AcceptedUsageEvent.from_message(fields[intake.EVENT_FIELD.encode()]) for _, fields in entries]


def stream_length(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return client.xlen(intake.STREAM)
    finally:
        client.close()


def assert_error(response, status: int, *, fields: list[str] | None = None) -> dict:
    """The answer is ``status`` with the contract's error body; with ``fields``, its
    ``details`` name exactly those fields (in any order, each once)."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json", response.headers
    body = response.get_json()
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "details"}, body
    assert isinstance(body["error"], str) and SENTENCE.fullmatch(body["error"]), body
    if fields is not None:
        details = body.get("details")
        assert isinstance(details, list) and details, body
        for detail in details:
            assert set(detail) == {"field", "message"}, detail
            assert isinstance(detail["message"], str) and detail["message"], detail
        assert sorted(d["field"] for d in details) == sorted(fields), body
    return body


def assert_unauthorized(response) -> dict:
    body = assert_error(response, 401)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers
    return body


@dataclass
class Billing(World):
    """The world, and a test client of the app to call the API with."""

    client: Any = None
    broker_url: str = ""

    def headers(self, token: str | None = None, *, idempotency_key: str | None = None, **extra: str) -> dict:
        headers = {"Authorization": f"Bearer {token or self.app_password}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        headers.update(extra)
        return headers

    def post(self, body: Any = None, *, token: str | None = None, idempotency_key: str | None = None, client=None):
        """POST one event as JSON (the valid body unless given)."""
        return (client or self.client).post(
            URL, json=self.body() if body is None else body, headers=self.headers(token, idempotency_key=idempotency_key)
        )

    def post_batch(self, events: Any, *, token: str | None = None):
        return self.client.post(BATCH_URL, json={"events": events}, headers=self.headers(token))

    def get(self, event_id: Any, *, token: str | None = None):
        return self.client.get(f"{URL}/{event_id}", headers=self.headers(token))

    def queued(self) -> list[AcceptedUsageEvent]:
        return queued_events(self.broker_url)

    def assert_token_refused(self, token: str, fragment: str | None = None) -> dict:
        """Posting with ``token`` is 401 with ``WWW-Authenticate: Bearer`` (with ``fragment``
        in its sentence), and queues nothing."""
        before = len(self.queued())
        body = assert_unauthorized(self.post(token=token))
        if fragment is not None:
            assert fragment in body["error"], body
        assert len(self.queued()) == before
        return body

    def assert_nothing_queued(self) -> None:
        assert stream_length(self.broker_url) == 0, self.queued()


@pytest.fixture
def billing(client, factory, broker_url) -> Billing:
    world = build_world(factory, password_name="ingest")
    return Billing(**vars(world), client=client, broker_url=broker_url)


def record_as_worker(settings, billing: Billing, event: AcceptedUsageEvent, **columns: Any) -> models.UserBillableRequestLog:
    """What a worker does once it has billed a queued event: commit its log row, then
    drop the "queued" status record. ``columns`` override the row's values."""
    row = log_row(
        service_id=billing.service.id,
        price=billing.price,
        agent700_cost="0.000768000000",
        **event.model_dump(exclude={"service_name"}),
    )
    for column, value in columns.items():
        setattr(row, column, value)
    store(settings, row)
    client = redis.Redis.from_url(billing.broker_url)
    try:
        client.delete(intake.QUEUED_KEY.format(event_id=event.id))
    finally:
        client.close()
    return row


# What a rolled-back test's connection adds around each of the app's blocks.
_SCAFFOLDING = re.compile(r"(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) \w+")


@pytest.fixture
def statements():
    """The SQL statements the app sends from now on (without the savepoints a rolled-back
    test wraps them in). Listened for on every engine: the test's database is reached
    through its one connection, not through the engine ``shared.db.engine_for`` makes."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not _SCAFFOLDING.fullmatch(statement):
            sent.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


@pytest.fixture
def reconfigure(billing, settings):
    """``reconfigure(**changes)``: a new app with those settings changed, and the billing
    world as its client sees it (``(billing, app)``)."""
    import dataclasses

    from ingest_api import create_app

    def build(**changes: Any):
        app = create_app(settings.replace(**changes))
        app.config["TESTING"] = True
        return dataclasses.replace(billing, client=app.test_client()), app

    return build
