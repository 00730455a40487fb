"""Meter event validation, shared by v1 (form, one event) and v2 (JSON, a stream of events).

Two stages, as at Stripe:

* ``parse_event`` checks the request's shape: ``event_name`` (<= 100 chars) and ``payload``
  (a map of strings) required; ``identifier`` optional (a UUID is generated), <= 100 chars;
  ``timestamp`` optional (receipt time), Unix seconds for v1, RFC 3339 for v2. A bad shape
  refuses the call, v1 and v2 alike.
* ``judge`` checks the event against the account, in this order: a meter for its
  ``event_name`` (``no_meter``), that meter active (``archived_meter``), the meter's customer
  key in the payload (``meter_event_no_customer_defined``) naming a customer that exists and
  is not deleted (``meter_event_customer_not_found``), a value under the meter's value key
  (``meter_event_value_not_found``; optional for count meters) that is a whole number
  (``meter_event_invalid_value``: Stripe documents whole numbers only, so ``3.5`` is
  refused like ``x``) of at most 15 digits (``meter_event_value_too_many_digits``), and a
  timestamp at most 35 days before receipt
  (``timestamp_too_far_in_past``) and 5 minutes after it (``timestamp_in_future``).

The codes are those of Stripe's asynchronous error reports. The v1 endpoint judges in the
request and answers a 400 with the same code and message, except that a missing meter or
customer is ``resource_missing``, as v1 names every missing object. The v2 stream judges
later (``validator.py``) and reports.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from local_stripe.state import DEFAULT_CUSTOMER_KEY, MeterEvent
from local_stripe.wire import StripeError, missing, parse_rfc3339

MAX_NAME_LENGTH = 100
MAX_VALUE_DIGITS = 15
PAST_LIMIT_SECONDS = 35 * 24 * 3600
FUTURE_LIMIT_SECONDS = 5 * 60
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
V1_CODES = {"no_meter": "resource_missing", "meter_event_customer_not_found": "resource_missing"}


def v1_name(*path: str) -> str:
    """``payload``, ``stripe_customer_id`` -> ``payload[stripe_customer_id]``."""
    return path[0] + "".join(f"[{part}]" for part in path[1:])


def v2_namer(prefix: str) -> Callable[..., str]:
    """For ``events[3]``: ``payload``, ``value`` -> ``events[3].payload.value``."""
    return lambda *path: ".".join((prefix, *path))


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why ``judge`` finds an event invalid: the error report's code and message, and the
    parameter path it concerns (a v1 error's ``param``)."""

    code: str
    message: str
    path: tuple[str, ...]

    def v1_error(self) -> StripeError:
        return StripeError(400, self.message, code=V1_CODES.get(self.code, self.code), param=v1_name(*self.path))


def parse_event(
    raw: dict[str, Any], *, via: str, name: Callable[..., str], now: float, idempotency_key: str | None = None
) -> MeterEvent:
    """Check one meter event's shape like Stripe; the event, received at ``now`` in the
    request with ``idempotency_key``.

    ``via`` is "v1" (Unix-seconds timestamp) or "v2" (RFC 3339); ``name`` spells a
    parameter path the way that API version does, for the error's ``param``.
    """
    event_name = raw.get("event_name")
    if not event_name:
        raise missing(name("event_name"))
    if not isinstance(event_name, str) or len(event_name) > MAX_NAME_LENGTH:
        raise StripeError(
            400, f"Invalid {name('event_name')}: must be a string of at most 100 characters.", param=name("event_name")
        )
    payload = raw.get("payload")
    if not payload:
        raise missing(name("payload"))
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        raise StripeError(400, f"Invalid {name('payload')}: must be a map of strings.", param=name("payload"))

    identifier = raw.get("identifier") or str(uuid.uuid4())
    if not isinstance(identifier, str) or len(identifier) > MAX_NAME_LENGTH:
        raise StripeError(
            400, f"Invalid {name('identifier')}: must be a string of at most 100 characters.", param=name("identifier")
        )

    raw_timestamp = raw.get("timestamp")
    if raw_timestamp in (None, ""):
        timestamp = int(now)
    elif via == "v1":
        try:
            timestamp = int(raw_timestamp)
        except (TypeError, ValueError):
            raise StripeError(
                400, f"Invalid integer: {raw_timestamp}", code="parameter_invalid_integer", param=name("timestamp")
            ) from None
    else:
        try:
            timestamp = int(parse_rfc3339(raw_timestamp))
        except (TypeError, ValueError, AttributeError):
            raise StripeError(
                400, f"Invalid {name('timestamp')}: must be an RFC 3339 date-time.", param=name("timestamp")
            ) from None
    return MeterEvent(
        identifier=identifier,
        event_name=event_name,
        payload=dict(payload),
        timestamp=timestamp,
        via=via,
        created=int(now),
        received_at=now,
        idempotency_key=idempotency_key,
    )


def customer_of(event: MeterEvent, meter: dict[str, Any] | None) -> str | None:
    """The customer the payload names through ``meter``'s key (the default key without one)."""
    key = meter["customer_mapping"]["event_payload_key"] if meter else DEFAULT_CUSTOMER_KEY
    return event.payload.get(key) or None


def _value_problem(value: str, value_key: str) -> Problem | None:
    """Why ``value`` cannot be counted, or None: a whole number of at most 15 digits."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        message = f"Value for key {value_key} must be a number, got {value!r}."
        return Problem("meter_event_invalid_value", message, ("payload", value_key))
    if not WHOLE_NUMBER.fullmatch(value.strip()):
        message = f"Value for key {value_key} must be a whole number, got {value!r}."
        return Problem("meter_event_invalid_value", message, ("payload", value_key))
    if len(number.as_tuple().digits) > MAX_VALUE_DIGITS:
        message = f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. Received {value}."
        return Problem("meter_event_value_too_many_digits", message, ("payload", value_key))
    return None


def judge(
    event: MeterEvent, *, meter: dict[str, Any] | None, customer_exists: Callable[[str], bool]
) -> MeterEvent | Problem:
    """The event with its customer and value read through ``meter`` (the one its
    event_name goes to, or None), or the first ``Problem`` found; times are judged
    against the event's receipt."""
    if meter is None:
        return Problem("no_meter", f"No meter was found matching event_name {event.event_name}.", ("event_name",))
    if meter["status"] != "active":
        return Problem(
            "archived_meter",
            f"The meter {meter['id']} for event_name {event.event_name!r} is inactive.",
            ("event_name",),
        )
    customer_key = meter["customer_mapping"]["event_payload_key"]
    customer = customer_of(event, meter)
    if customer is None:
        return Problem(
            "meter_event_no_customer_defined",
            f"Customer mapping key {customer_key} not found in payload.",
            ("payload", customer_key),
        )
    if not customer_exists(customer):
        return Problem("meter_event_customer_not_found", f"No such customer: '{customer}'", ("payload", customer_key))

    value_key = meter["value_settings"]["event_payload_key"]
    value = event.payload.get(value_key)
    if value is None and meter["default_aggregation"]["formula"] != "count":
        return Problem(
            "meter_event_value_not_found", f"Value key {value_key} not found in payload.", ("payload", value_key)
        )
    if value is not None and (problem := _value_problem(value, value_key)) is not None:
        return problem

    if event.timestamp < event.received_at - PAST_LIMIT_SECONDS:
        return Problem(
            "timestamp_too_far_in_past", "The timestamp must be within the past 35 calendar days.", ("timestamp",)
        )
    if event.timestamp > event.received_at + FUTURE_LIMIT_SECONDS:
        return Problem(
            "timestamp_in_future", "The timestamp must not be more than 5 minutes in the future.", ("timestamp",)
        )
    return dataclasses.replace(event, customer=customer, value=value, meter_id=meter["id"])
