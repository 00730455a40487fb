"""Stripe's billing meter as this service uses it: which meter counts our events and how it
must be set up, what an event may hold, the event types of its error reports, its times,
and how its summaries are read and compared with our rows.

The reporter (``worker.stripe_reporting``), the error-report handler
(``worker.stripe_error_reports``), the webhook (``ingest_api.stripe_events``) and the
operator commands (``stripe ensure-meter``, ``stripe reconcile``) all take these rules from
here. The Stripe client itself is built by ``shared.stripe_client``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import stripe

from shared import billing_window

# --- the meter ---------------------------------------------------------------------------

# The meter as the service needs it: the sum of ``payload.value`` per ``payload.stripe_customer_id``.
FORMULA = "sum"
CUSTOMER_KEY = "stripe_customer_id"
VALUE_KEY = "value"
# Meters a list request asks for at once (Stripe's maximum page).
PAGE_SIZE = 100


def select_meter(meters: Iterable, event_name: str):
    """The meter counting ``event_name``: the active one, else an inactive one (its
    history is still there); None if Stripe has none."""
    named = [meter for meter in meters if meter.event_name == event_name]
    return next((m for m in named if m.status == "active"), named[0] if named else None)


def setup_problem(meters: Iterable, event_name: str):
    """(the meter counting ``event_name``, or None; why it cannot count this service's
    events as they are sent, or None when it can)."""
    meter = select_meter(meters, event_name)
    if meter is None:
        return None, f"Stripe has no billing meter for event name {event_name!r}; create it with `stripe ensure-meter`."
    if meter.status != "active":
        return meter, f"Stripe's billing meter {meter.id} for {event_name!r} is {meter.status}; reactivate it in Stripe."
    wrong = []
    if meter.default_aggregation.formula != FORMULA:
        wrong.append(f"aggregation {meter.default_aggregation.formula!r} (needs {FORMULA!r})")
    if meter.customer_mapping.event_payload_key != CUSTOMER_KEY:
        wrong.append(f"customer key {meter.customer_mapping.event_payload_key!r} (needs {CUSTOMER_KEY!r})")
    if meter.value_settings.event_payload_key != VALUE_KEY:
        wrong.append(f"value key {meter.value_settings.event_payload_key!r} (needs {VALUE_KEY!r})")
    if wrong:
        return meter, f"Stripe's billing meter {meter.id} for {event_name!r} is set up otherwise: {', '.join(wrong)}."
    return meter, None


# --- what an event may hold --------------------------------------------------------------

# Events per call of the v2 meter event stream.
STREAM_MAX_EVENTS = 100
# What Stripe counts (Billing Meters): an event within the billing window (at most 35
# days older and 5 minutes newer than its receipt, shared/billing_window.py), a value of
# at most 15 digits (changelog 2026-04-22.dahlia). The v2 stream takes anything and drops
# what breaks these rules later, so they are checked before sending, with a margin for
# the time the event spends in transit.
MAX_VALUE_DIGITS = 15


@dataclass(frozen=True)
class MeterEvent:
    row_id: uuid.UUID
    stripe_customer_id: str
    value: int
    occurred_at: dt.datetime
    # Stripe calls that carried it before and did not report it (v1 keys are fresh per
    # attempt: Stripe stores a v1 key's first answer, a 500 included).
    earlier_attempts: int = 0


def unsendable(event: MeterEvent, now: dt.datetime) -> str | None:
    """Why Stripe would drop this event if it were sent now; None if it would count it."""
    if event.occurred_at < now - billing_window.MAX_SENT_AGE:
        return (
            f"Too old for Stripe: it occurred at {event.occurred_at.isoformat()}, and Stripe counts no meter event "
            f"older than 35 days at receipt (now {now.isoformat(timespec='seconds')}); it was not sent."
        )
    if event.occurred_at > now + billing_window.STRIPE_MAX_LEAD:
        return (
            f"Too far ahead for Stripe: it occurred at {event.occurred_at.isoformat()}, more than 5 minutes after "
            f"now ({now.isoformat(timespec='seconds')}); it was not sent."
        )
    if len(str(abs(event.value))) > MAX_VALUE_DIGITS:
        return f"Its meter value {event.value} has more than {MAX_VALUE_DIGITS} digits, which Stripe refuses; it was not sent."
    return None


# --- its error reports -------------------------------------------------------------------

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"
# The events that can mean a reported row was dropped.
ERROR_REPORT_TYPES = (ERROR_REPORT_TRIGGERED, NO_METER_FOUND)
# Error codes of an error report, as Stripe names them.
TIMESTAMP_CODES = frozenset({"timestamp_too_far_in_past", "timestamp_in_future"})
VALUE_CODES = frozenset({"meter_event_value_too_many_digits", "meter_event_invalid_value"})


def parse_time(value: object) -> dt.datetime:
    """A time as Stripe's API sends it, as an aware datetime: the v2 API's RFC 3339 text
    (``2025-01-31T09:45:00.000Z``, which the SDK hands over as it is), or v1's Unix seconds."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# --- its summaries -----------------------------------------------------------------------

MINUTE = dt.timedelta(minutes=1)


def list_summaries(
    client: stripe.StripeClient, meter_id: str, customer: str, start: dt.datetime, end: dt.datetime,
    grouping: str | None = None,
) -> list:
    """The customer's meter event summaries of [start, end) (minute boundaries), grouped
    by ``grouping`` ("hour", "day") or as one."""
    params = {"customer": customer, "start_time": int(start.timestamp()), "end_time": int(end.timestamp()), "limit": PAGE_SIZE}
    if grouping:
        params["value_grouping_window"] = grouping
    return list(client.v1.billing.meters.event_summaries.list(meter_id, params).auto_paging_iter())


def summary_value(summary) -> Decimal:
    # A JSON number (a float in the SDK): via its text, so no binary fraction creeps in.
    return Decimal(str(summary.aggregated_value))


def counted(client: stripe.StripeClient, meter_id: str, customer: str, start: dt.datetime, end: dt.datetime) -> Decimal:
    """What Stripe counts for the customer in [start, end), in one request."""
    return sum((summary_value(s) for s in list_summaries(client, meter_id, customer, start, end)), Decimal(0))


def rows_stripe_lacks(rows: Sequence, difference: Decimal) -> tuple[Sequence, bool]:
    """Which of a minute's rows (each with a ``stripe_value``) Stripe lacks, when it counts
    ``difference`` less than they sum to: (those rows, whether that is certain).

    Certain when the difference is all of them, or exactly one row equals it; otherwise
    any of them may be the ones, and all are returned.
    """
    if difference == sum(row.stripe_value for row in rows):
        return rows, True
    exact = [row for row in rows if row.stripe_value == difference]
    if len(exact) == 1:
        return exact, True
    return rows, False
