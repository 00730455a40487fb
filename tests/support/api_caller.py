"""The billable world as the ingest API's caller sees it (``Billing``: the world and a test
client of the app, with the caller's credentials), and ``record_as_worker``: what a
worker leaves behind once it has billed a queued event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from shared import intake, models
from shared.usage_event import AcceptedUsageEvent
from tests.support.billing import BATCH_URL, URL, World, log_row, store
from tests.support.error_answers import assert_unauthorized
from tests.support.intake_stream import queued_events, stream_length


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



