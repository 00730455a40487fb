"""Meter event validation, shared by v1 (form, one event) and v2 (JSON, a stream of events).

Stripe's rules: ``event_name`` (<= 100 chars) and ``payload`` required; the payload holds
strings, among them the meter's customer key (default ``stripe_customer_id``) and a
numeric value under its value key (default ``value``; optional for count meters);
``identifier`` optional (a UUID is generated), <= 100 chars; ``timestamp`` optional
(now), within the past 35 days and at most 5 minutes ahead. Events for an inactive meter
are refused (``archived_meter``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from local_stripe.state import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, MeterEvent
from local_stripe.wire import StripeError, missing, parse_rfc3339

MAX_NAME_LENGTH = 100
PAST_LIMIT_SECONDS = 35 * 24 * 3600
FUTURE_LIMIT_SECONDS = 5 * 60


def v1_name(*path: str) -> str:
    """``payload``, ``stripe_customer_id`` -> ``payload[stripe_customer_id]``."""
    return path[0] + "".join(f"[{part}]" for part in path[1:])


def v2_namer(prefix: str) -> Callable[..., str]:
    """For ``events[3]``: ``payload``, ``value`` -> ``events[3].payload.value``."""
    return lambda *path: ".".join((prefix, *path))


def _is_number(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except InvalidOperation:
        return False


def parse_event(
    raw: dict[str, Any],
    *,
    via: str,
    name: Callable[..., str],
    now: float,
    meter_for: Callable[[str], dict[str, Any] | None],
) -> MeterEvent:
    """Validate one meter event like Stripe and read it through its meter (``meter_for``
    its event_name; None: the default keys and a sum).

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

    meter = meter_for(event_name)
    if meter is not None and meter["status"] != "active":
        raise StripeError(
            400,
            f"The meter {meter['id']} for event_name {event_name!r} is inactive.",
            code="archived_meter",
            param=name("event_name"),
        )
    customer_key = meter["customer_mapping"]["event_payload_key"] if meter else DEFAULT_CUSTOMER_KEY
    value_key = meter["value_settings"]["event_payload_key"] if meter else DEFAULT_VALUE_KEY
    formula = meter["default_aggregation"]["formula"] if meter else "sum"

    customer = payload.get(customer_key)
    if not customer:
        raise StripeError(
            400,
            f"Customer mapping key {customer_key} not found in payload.",
            code="meter_event_no_customer_defined",
            param=name("payload", customer_key),
        )
    value = payload.get(value_key)
    if value is None and formula != "count":
        raise StripeError(
            400,
            f"Value key {value_key} not found in payload.",
            code="meter_event_invalid_value",
            param=name("payload", value_key),
        )
    if value is not None and not _is_number(value):
        raise StripeError(
            400,
            f"Value for key {value_key} must be a number, got {value!r}.",
            code="meter_event_value_not_numeric",
            param=name("payload", value_key),
        )

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
    if timestamp < now - PAST_LIMIT_SECONDS:
        raise StripeError(
            400,
            "The timestamp must be within the past 35 calendar days.",
            code="timestamp_too_far_in_past",
            param=name("timestamp"),
        )
    if timestamp > now + FUTURE_LIMIT_SECONDS:
        raise StripeError(
            400,
            "The timestamp must not be more than 5 minutes in the future.",
            code="timestamp_in_future",
            param=name("timestamp"),
        )
    return MeterEvent(
        identifier=identifier,
        event_name=event_name,
        payload=dict(payload),
        customer=customer,
        value=value,
        timestamp=timestamp,
        via=via,
        created=int(now),
        received_at=now,
    )
