"""The request and response models of the usage API: they validate, and they are the
source of ``/openapi.json``.

Validation is strict: JSON numbers are not strings, ``12.0`` and ``true`` are not
integers, and any field the contract does not name is refused.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic_core import PydanticCustomError

from shared import billing_window, usage_totals
from shared.usage_event import UsageEventFields
from shared.usage_voids import MAX_REASON_CHARS

MAX_TOKENS = 2_147_483_647
MAX_BATCH_EVENTS = 100
_ACCEPTED_DAYS = billing_window.MAX_ACCEPTED_AGE.days
_ACCEPTED_LEAD_MINUTES = billing_window.MAX_ACCEPTED_LEAD.seconds // 60
# PostgreSQL's timestamptz refuses an offset of 16 hours or more ("time zone displacement
# out of range"), although RFC 3339 and pydantic allow up to 23:59; an event the edge took
# with one could never be stored.
MAX_UTC_OFFSET = dt.timedelta(hours=15, minutes=59)


def _json_string(value: Any) -> Any:
    """UUIDs and times arrive as JSON strings; a number or object there is a type error."""
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a string")
    return value


# RFC 3339 section 5.6 date-time: seconds and an offset required, "T" and "Z" in either case.
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def _storable_offset(moment: dt.datetime) -> dt.datetime:
    if abs(moment.utcoffset()) > MAX_UTC_OFFSET:
        raise PydanticCustomError("utc_offset_range", "Must have a UTC offset between -15:59 and +15:59")
    return moment


def _rfc3339_string(value: Any) -> Any:
    """Pydantic's lax datetime parsing also takes Unix seconds in a string, times without
    seconds and offsets without a colon; the contract asks for RFC 3339."""
    if not _RFC3339.fullmatch(_json_string(value)):
        raise PydanticCustomError(
            "rfc3339_format", "Must be an RFC 3339 date-time with an offset, such as 2025-01-31T09:30:00Z"
        )
    return value


# What a later stage cannot store or send, so an accepted event can never fail downstream
# for its text: NUL (PostgreSQL text and jsonb refuse it, though JSON, Python and Redis
# take it), lone surrogates (UTF-8, and so PostgreSQL and Stripe, cannot encode them),
# other control characters and Unicode noncharacters (never text; they corrupt logs and
# exports). Everything else of Unicode is accepted.
_UNSTORABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane * 0x10000 + 0xFFFE) + chr(plane * 0x10000 + 0xFFFF) for plane in range(17))
    + "]"
)


def _storable(text: str) -> str:
    if (found := _UNSTORABLE.search(text)) is not None:
        raise PydanticCustomError(
            "unstorable_character",
            "Must not contain control characters, lone surrogates or noncharacters "
            "(found {character} at position {position})",
            {"character": f"U+{ord(found.group()):04X}", "position": found.start()},
        )
    return text


UuidString = Annotated[uuid.UUID, pydantic.Strict(False), pydantic.BeforeValidator(_json_string)]
Rfc3339Time = Annotated[
    pydantic.AwareDatetime,
    pydantic.Strict(False),
    pydantic.BeforeValidator(_rfc3339_string),
    pydantic.AfterValidator(_storable_offset),
]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
StorableText = pydantic.AfterValidator(_storable)
Name = Annotated[str, Field(min_length=1, max_length=200), StorableText]


class UsageEventIn(pydantic.BaseModel):
    """One usage event to bill."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    user_id: UuidString = Field(description="The user the usage is attributed to.")
    organization_id: UuidString = Field(description="The organization billed in Stripe.")
    model_name: Name = Field(description="An LLM model with a price in text_model_costs.", examples=["gpt-4o-mini"])
    input_tokens: TokenCount = Field(description="Input (prompt) tokens consumed.")
    output_tokens: TokenCount = Field(description="Output (completion) tokens produced.")
    service_name: Name = Field(description="The external service, as in services.name.", examples=["transcription"])
    source: Annotated[str, Field(min_length=1, max_length=64), StorableText] = Field(
        default="external_api", description="The channel the usage came through."
    )
    occurred_at: Rfc3339Time | None = Field(
        default=None,
        description=f"When the usage happened (RFC 3339, with a UTC offset between -15:59 and +15:59); at most "
        f"{_ACCEPTED_DAYS} days old (Stripe counts up to 35: the day between is the pipeline's margin) and "
        f"{_ACCEPTED_LEAD_MINUTES} minutes ahead of the time of receipt. Defaults to the time of receipt.",
    )

    @pydantic.field_validator("occurred_at")
    @classmethod
    def _within_billing_window(cls, occurred_at: dt.datetime | None, info: pydantic.ValidationInfo):
        if occurred_at is None:
            return None
        now = (info.context or {}).get("received_at") or dt.datetime.now(dt.UTC)
        if occurred_at < now - billing_window.MAX_ACCEPTED_AGE:
            raise ValueError(f"Must be at most {_ACCEPTED_DAYS} days old")
        if occurred_at > now + billing_window.MAX_ACCEPTED_LEAD:
            raise ValueError(f"Must be at most {_ACCEPTED_LEAD_MINUTES} minutes in the future")
        return occurred_at


# An idempotency key, the header's and a batch event's alike. HTTP servers strip the
# spaces around a header's value (a header "K " arrives as "K"), so a key that begins or
# ends with one would mean another key in a body than in a header: such keys are refused.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$"
IDEMPOTENCY_KEY_RULE = "Must be 1 to 255 printable ASCII characters (U+0020 to U+007E) that neither begin nor end with a space"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def valid_idempotency_key(key: str) -> bool:
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None


def _idempotency_key(key: str) -> str:
    if not valid_idempotency_key(key):
        raise PydanticCustomError("idempotency_key_format", IDEMPOTENCY_KEY_RULE)
    return key


IdempotencyKey = Annotated[
    str,
    pydantic.AfterValidator(_idempotency_key),
    pydantic.WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN}),
]


class BatchEventIn(UsageEventIn):
    """One event of a batch; it may carry its own idempotency key."""

    idempotency_key: IdempotencyKey | None = Field(
        default=None,
        description=f"This event's Idempotency-Key. {IDEMPOTENCY_KEY_RULE}.",
    )


# Each item is validated on its own later (a bad one is rejected, not the batch), so the
# list takes any JSON value; its JSON schema is still BatchEventIn's, generated from it.
_BatchItem = Annotated[Any, pydantic.PlainValidator(lambda item: item, json_schema_input_type=BatchEventIn)]


class BatchIn(pydantic.BaseModel):
    """Up to 100 events, each judged on its own."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    events: Annotated[list[_BatchItem], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


Status = Literal["queued", "recorded", "reported", "failed", "voided"]


class AcceptedOut(pydantic.BaseModel):
    id: uuid.UUID
    status: Status


class StripeReportOut(pydantic.BaseModel):
    identifier: str
    value: int | None = Field(description="agent700_cost × 10^STRIPE_VALUE_DECIMALS, rounded half-even.")
    reported_at: dt.datetime | None


class VoidIn(pydantic.BaseModel):
    """Why an event is taken back."""

    model_config = pydantic.ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS), StorableText] = Field(
        description="Why the event should never have been billed (1 to 500 characters).",
        examples=["Retried transcription job sent twice without an Idempotency-Key"],
    )

    @pydantic.field_validator("reason")
    @classmethod
    def _not_blank(cls, reason: str) -> str:
        if not reason.strip():
            raise PydanticCustomError("blank", "Must not be only spaces")
        return reason


class VoidOut(pydantic.BaseModel):
    """A void asked for: who, when, why, and how Stripe's side is done."""

    reason: str
    requested_at: dt.datetime
    requested_by: str = Field(description="The caller's user id (``operator:<login>`` from the command line).")
    method: Literal["never_sent", "stripe_cancel", "stripe_negative_event", "manual_credit"] = Field(
        description=(
            "never_sent: Stripe never billed it. stripe_cancel: a meter event adjustment (within 24 h of Stripe "
            "receiving it). stripe_negative_event: a meter event of the negated value, at the event's own time. "
            "manual_credit: Stripe can no longer be changed for it; finance issues a credit note."
        )
    )
    completed_at: dt.datetime | None = Field(description="When nothing of the event remained billed; null until then.")


class UsageEventOut(UsageEventFields):
    """The status record of one event."""

    status: Status
    service_cost: str | None = Field(
        description="Decimal string, what the provider charges.", examples=["0.000384000000000000"]
    )
    agent700_cost: str | None = Field(
        description="Decimal string, what the customer pays.", examples=["0.000768000000000000"]
    )
    stripe: StripeReportOut
    error: str | None
    void: VoidOut | None = Field(default=None, description="Null unless a void was asked for.")


# --- usage totals: GET /api/billing/usage -------------------------------------------------

GroupName = Literal[tuple(usage_totals.GROUPS)]
_MAX_SPAN_DAYS = usage_totals.MAX_SPAN.days


def _in_utc(moment: dt.datetime) -> dt.datetime:
    """The time in UTC, as the answer names it; a time at the edge of the calendar with an
    offset (0001-01-01T00:00:00+01:00) has no UTC time Python can hold."""
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "Must be a time between the years 1 and 9999 in UTC") from None


def _each_group_once(group_by: list[str]) -> list[str]:
    if len(set(group_by)) != len(group_by):
        raise PydanticCustomError("unique_groups", "Must name each group once")
    return group_by


WindowTime = Annotated[Rfc3339Time, pydantic.AfterValidator(_in_utc)]


class UsageTotalsQuery(pydantic.BaseModel):
    """The query of ``GET /api/billing/usage``: whose usage, over which window, grouped how.
    Every parameter is given at most once, except ``group_by``, repeated for each group."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    organization_id: UuidString = Field(description="An existing organization: whose usage.")
    from_: WindowTime | None = Field(
        default=None,
        alias="from",
        description="Start of the window, inclusive (RFC 3339 with a UTC offset between -15:59 and +15:59). "
        "Defaults to the start of the current UTC month.",
        examples=["2026-11-01T00:00:00Z"],
    )
    to: WindowTime | None = Field(
        default=None,
        description=f"End of the window, exclusive (RFC 3339 with an offset); after `from`, at most "
        f"{_MAX_SPAN_DAYS} days after it. Defaults to now.",
        examples=["2026-12-01T00:00:00Z"],
    )
    group_by: Annotated[
        list[GroupName],
        Field(max_length=len(usage_totals.GROUPS), json_schema_extra={"uniqueItems": True}),
        pydantic.AfterValidator(_each_group_once),
    ] = Field(
        default=[],
        description="What to group by, in this order: repeat the parameter for each (group_by=model_name&group_by=day), "
        "each at most once. Days and hours are UTC. None: one group of everything.",
    )


_MONEY_DESCRIPTION = "Decimal string, exact (never rounded): the sum of the events' {}."


class UsageFiguresOut(pydantic.BaseModel):
    """What a set of events adds up to."""

    events: int = Field(description="How many events.")
    input_tokens: int
    output_tokens: int
    service_cost: str = Field(
        description=_MONEY_DESCRIPTION.format("service_cost: what the provider charges"), examples=["0.000384000000000000"]
    )
    agent700_cost: str = Field(
        description=_MONEY_DESCRIPTION.format("agent700_cost: what the customer pays"), examples=["0.000768000000000000"]
    )
    stripe_value: int = Field(
        description="The sum of the events' meter values (agent700_cost × 10^STRIPE_VALUE_DECIMALS, each rounded "
        "half-even once, as Stripe is sent it)."
    )


class UsageStatesOut(pydantic.BaseModel):
    """The figures split by how far billing got."""

    billed: UsageFiguresOut = Field(description="Reported: Stripe took their meter events.")
    pending: UsageFiguresOut = Field(description="Recorded, not reported to Stripe yet.")
    failed: UsageFiguresOut = Field(description="Recorded, but Stripe could not take them (see `usage failed`).")
    voided: UsageFiguresOut = Field(description="Taken back: nothing of them is billed.")


class UsageTotalOut(UsageFiguresOut):
    """The figures of every event of the window, and their split by state."""

    by_state: UsageStatesOut


class UsageGroupKeyOut(pydantic.BaseModel):
    """What a group's events share: one field per name of ``group_by``, the others absent."""

    model_name: str | None = None
    service_name: str | None = Field(default=None, description="Null for events of no service.")
    source: str | None = None
    user_id: uuid.UUID | None = None
    day: dt.datetime | None = Field(default=None, description="The UTC day's start, such as 2026-11-03T00:00:00Z.")
    hour: dt.datetime | None = Field(default=None, description="The UTC hour's start, such as 2026-11-03T05:00:00Z.")


class _Keyed(pydantic.BaseModel):
    key: UsageGroupKeyOut


# _Keyed last among the bases puts ``key`` first in a group's fields (pydantic orders
# them from the last base on): a group reads key, then its figures.
class UsageGroupOut(UsageTotalOut, _Keyed):
    """One group: its key, its figures, and their split by state."""


class UsageTotalsOut(pydantic.BaseModel):
    """An organization's usage over [from, to): the total, and the groups asked for."""

    model_config = pydantic.ConfigDict(populate_by_name=True)

    organization_id: uuid.UUID
    from_: dt.datetime = Field(alias="from", description="Start of the window (inclusive), in UTC.")
    to: dt.datetime = Field(description="End of the window (exclusive), in UTC.")
    group_by: list[GroupName] = Field(description="The groups' key fields, in order.")
    as_of: dt.datetime = Field(description="The database's time of the answer.")
    covers: str = Field(description="What the figures count: recorded events; queued ones are not in them yet.")
    total: UsageTotalOut
    groups: list[UsageGroupOut] = Field(
        description="In the order of their keys; without group_by, one group of everything (none without events)."
    )


class ErrorDetailOut(pydantic.BaseModel):
    field: str
    message: str


class BatchResultOut(pydantic.BaseModel):
    index: int = Field(description="The event's position in the request's events, from 0.")
    id: uuid.UUID | None = Field(
        default=None,
        description="queued: the new event; duplicate: the event first accepted with this idempotency_key; "
        "unknown: the event attempted. Absent when rejected.",
    )
    status: Literal["queued", "duplicate", "rejected", "unknown"] = Field(
        description="queued: accepted now; duplicate: accepted before, billed once; rejected: refused, "
        "nothing recorded; unknown: only in a 503 answer, the queue may or may not have taken it."
    )
    error: str | None = None
    details: list[ErrorDetailOut] | None = None


class BatchOut(pydantic.BaseModel):
    results: list[BatchResultOut]


class ErrorOut(pydantic.BaseModel):
    error: str = Field(description="One readable sentence.")
    details: list[ErrorDetailOut] | None = None


class OutcomeUnknownOut(pydantic.BaseModel):
    """503 when the queue's reply was lost: the event may or may not have been accepted.
    A retry with the same Idempotency-Key settles it; so does GET of ``id`` (200 or 404)."""

    error: str = Field(description="One readable sentence.")
    status: Literal["unknown"]
    id: uuid.UUID = Field(description="The id of the event attempted.")


class BatchOutcomeUnknownOut(pydantic.BaseModel):
    """503 of a batch when the queue's reply was lost: its ``unknown`` events may or may
    not have been accepted; its ``rejected`` ones were not."""

    error: str = Field(description="One readable sentence.")
    status: Literal["unknown"]
    results: list[BatchResultOut] = Field(description="One per event, in order: unknown or rejected.")


class HealthOut(pydantic.BaseModel):
    status: Literal["ok"]


class ReadinessOut(pydantic.BaseModel):
    status: Literal["ready", "unavailable"]
    error: str | None = Field(default=None, description="When unavailable: which dependency did not answer.")
    failing: list[Literal["database", "broker"]] | None = None


def error_details(error: pydantic.ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as the contract's ``details``: one per field, readable."""
    details = []
    for problem in error.errors(include_url=False, include_context=False, include_input=False):
        field = ".".join(str(part) for part in problem["loc"]) or "body"
        message = {
            "missing": "This field is required.",
            "extra_forbidden": "Unknown field.",
        }.get(problem["type"], problem["msg"].removeprefix("Value error, ") + ".")
        details.append({"field": field, "message": message})
    return details
