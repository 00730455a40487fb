"""What goes to the billing API and what comes back, as plain dataclasses.

Money is ``Decimal`` (parsed from the service's decimal strings), never ``float``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

BatchStatus = Literal["queued", "duplicate", "rejected"]
EventStatus = Literal["queued", "recorded", "reported", "failed"]


def new_idempotency_key() -> str:
    """A key for one logical event: random, so two events never share one by accident."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class UsageEvent:
    """One usage event to bill. ``idempotency_key`` is filled in by the client when left
    ``None``; set it yourself to make retries across calls (or processes) bill once."""

    user_id: uuid.UUID | str
    organization_id: uuid.UUID | str
    model_name: str
    input_tokens: int
    output_tokens: int
    service_name: str
    source: str | None = None
    occurred_at: dt.datetime | None = None
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        # The service wants RFC 3339 with an offset; a naive time would be refused (422)
        # only after a round trip, or worse, read in the wrong zone by a later change.
        if self.occurred_at is not None and self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /api/billing/external-usage`` (without the key)."""
        body: dict[str, Any] = {
            "user_id": str(self.user_id),
            "organization_id": str(self.organization_id),
            "model_name": self.model_name,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "service_name": self.service_name,
        }
        if self.source is not None:
            body["source"] = self.source
        if self.occurred_at is not None:
            body["occurred_at"] = self.occurred_at.isoformat()
        return body


@dataclass(frozen=True)
class ErrorDetail:
    """One problem the service found with a field."""

    field: str
    message: str


@dataclass(frozen=True)
class Accepted:
    """The service took the event: it will be billed exactly once.

    ``replayed`` is true when the service had already accepted this Idempotency-Key (an
    earlier attempt whose answer was lost, or an earlier call); ``status`` is then the
    event's current status, else ``"queued"``.
    """

    id: uuid.UUID
    status: EventStatus
    replayed: bool
    idempotency_key: str


@dataclass(frozen=True)
class BatchItemResult:
    """The outcome of one event of a batch, at the caller's own ``index``.

    ``queued`` and ``duplicate`` are both accepted (``duplicate``: the key was accepted
    before, possibly by an attempt whose answer was lost); ``rejected`` events were
    refused for what they are (``error``, ``details``) and are not retried.
    """

    index: int
    status: BatchStatus
    idempotency_key: str
    id: uuid.UUID | None = None
    error: str | None = None
    details: tuple[ErrorDetail, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status != "rejected"


@dataclass(frozen=True)
class StripeReport:
    identifier: str
    value: int | None
    reported_at: dt.datetime | None


@dataclass(frozen=True)
class UsageRecord:
    """``GET /api/billing/external-usage/<id>``: where an accepted event is now."""

    id: uuid.UUID
    status: EventStatus
    user_id: uuid.UUID
    organization_id: uuid.UUID
    service_name: str
    model_name: str
    input_tokens: int
    output_tokens: int
    source: str
    occurred_at: dt.datetime
    service_cost: Decimal | None
    agent700_cost: Decimal | None
    stripe: StripeReport
    error: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> UsageRecord:
        stripe = body.get("stripe") or {}
        return cls(
            id=uuid.UUID(body["id"]),
            status=body["status"],
            user_id=uuid.UUID(body["user_id"]),
            organization_id=uuid.UUID(body["organization_id"]),
            service_name=body["service_name"],
            model_name=body["model_name"],
            input_tokens=int(body["input_tokens"]),
            output_tokens=int(body["output_tokens"]),
            source=body["source"],
            occurred_at=parse_time(body["occurred_at"]),
            service_cost=_decimal(body.get("service_cost")),
            agent700_cost=_decimal(body.get("agent700_cost")),
            stripe=StripeReport(
                identifier=stripe.get("identifier", body["id"]),
                value=None if stripe.get("value") is None else int(stripe["value"]),
                reported_at=None if stripe.get("reported_at") is None else parse_time(stripe["reported_at"]),
            ),
            error=body.get("error"),
            raw=body,
        )


def parse_time(text: str) -> dt.datetime:
    # Python 3.10's fromisoformat does not take the "Z" the service writes.
    return dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)


def _decimal(value: Any) -> Decimal | None:
    # The service sends decimal strings; str() first so that a number, if ever sent,
    # is not turned into a binary float on the way.
    return None if value is None else Decimal(str(value))


def error_details(body: Any) -> tuple[ErrorDetail, ...]:
    if not isinstance(body, dict) or not isinstance(body.get("details"), list):
        return ()
    return tuple(
        ErrorDetail(field=str(item.get("field", "")), message=str(item.get("message", "")))
        for item in body["details"]
        if isinstance(item, dict)
    )
