"""The queue message: one accepted usage event, as the web side hands it to the worker side."""

from __future__ import annotations

import datetime as dt
import uuid

import pydantic


class UsageEventFields(pydantic.BaseModel):
    """What a usage event is about: the fields the queue message and the status record share."""

    id: uuid.UUID
    user_id: uuid.UUID
    organization_id: uuid.UUID
    service_name: str
    model_name: str
    input_tokens: int
    output_tokens: int
    source: str
    occurred_at: dt.datetime


class AcceptedUsageEvent(UsageEventFields):
    """What the edge accepted; everything the pipeline needs to bill it exactly once."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    received_at: dt.datetime
    caller_user_id: uuid.UUID
    idempotency_key: str | None = None
    # The body's fingerprint under idempotency_key, kept on the log row so that a replay
    # of the key is told apart from another body for as long as the row exists.
    idempotency_fingerprint: str | None = None

    def to_message(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_message(cls, message: str | bytes) -> AcceptedUsageEvent:
        return cls.model_validate_json(message)
