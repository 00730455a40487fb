"""The server's in-memory store: customers, meters, meter events, v2 events, sessions,
idempotency records, the error reports not yet due.

One lock guards everything; every method takes it for a short, non-blocking critical
section (nobody sleeps while holding it). Times are the server clock's (``clock.py``).

Identifiers are one namespace for v1 and v2 events, unique within a rolling 24 h from an
identifier's first receipt, as at Stripe: after that the same identifier is a new event
(a resend a day later counts twice).

A meter event is ``valid`` (counted in its meter's summaries ``summary_lag_seconds`` after
receipt) or, when it came through the v2 stream, first ``pending`` until the validator
judges it, then ``valid`` or ``invalid`` (dropped: listed for inspection, never counted,
its identifier free again for a corrected resend). A valid event canceled by a meter
event adjustment leaves the summaries ``summary_lag_seconds`` after the cancellation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
import string
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from local_stripe.clock import Clock
from local_stripe.wire import StripeError, new_id

DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"
DAY_SECONDS = 24 * 3600
# How long an identifier stays taken, a stored idempotent answer is replayed, and an
# event can be canceled (Stripe: 24 h each).
IDENTIFIER_WINDOW_SECONDS = IDEMPOTENCY_SECONDS = CANCEL_WINDOW_SECONDS = DAY_SECONDS


@dataclasses.dataclass(frozen=True)
class MeterEvent:
    """An accepted meter event. ``customer`` and ``value`` are read through its meter's keys
    once it is judged valid (``events.judge``); None before that."""

    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: int
    via: str  # "v1" or "v2"
    created: int
    received_at: float
    customer: str | None = None
    value: str | None = None
    # The meter it was attributed to when judged valid: its summaries count it.
    meter_id: str | None = None
    # The Idempotency-Key of the request that brought it (what error reports sample).
    idempotency_key: str | None = None
    canceled_at: float | None = None

    def counted(self, now: float, lag: float) -> bool:
        """In the summaries at ``now``: received ``lag`` ago, and not canceled that long ago."""
        canceled = self.canceled_at is not None and self.canceled_at + lag <= now
        return self.received_at + lag <= now and not canceled

    def v1_object(self) -> dict[str, Any]:
        return {
            "object": "billing.meter_event",
            "created": self.created,
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": False,
            "payload": dict(self.payload),
            "timestamp": self.timestamp,
        }

    def listing(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "event_name": self.event_name,
            "customer": self.customer,
            "value": self.value,
            "timestamp": self.timestamp,
            "via": self.via,
            "received_at": self.received_at,
            "canceled_at": self.canceled_at,
        }


def new_meter(
    event_name: str,
    *,
    display_name: str | None = None,
    formula: str = "sum",
    customer_key: str = DEFAULT_CUSTOMER_KEY,
    value_key: str = DEFAULT_VALUE_KEY,
    event_time_window: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A ``billing.meter`` object as Stripe returns it, created at ``now`` (default: real now)."""
    now = int(time.time() if now is None else now)
    return {
        "id": new_id("mtr_test"),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
        "default_aggregation": {"formula": formula},
        "display_name": display_name or event_name,
        "event_name": event_name,
        "event_time_window": event_time_window,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": value_key},
    }


def new_customer(customer_id: str | None = None, now: float | None = None, **fields: Any) -> dict[str, Any]:
    """A ``customer`` object as Stripe returns it, created at ``now`` (default: real now);
    ``fields`` among name, email, description, phone, metadata. Stripe's ids are ``cus_``
    and 14 letters or digits."""
    alphabet = string.ascii_letters + string.digits
    return {
        "id": customer_id or "cus_" + "".join(secrets.choice(alphabet) for _ in range(14)),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": int(time.time() if now is None else now),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": fields.get("description"),
        "discount": None,
        "email": fields.get("email"),
        "invoice_prefix": "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": dict(fields.get("metadata") or {}),
        "name": fields.get("name"),
        "next_invoice_sequence": 1,
        "phone": fields.get("phone"),
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def deleted_customer(customer_id: str) -> dict[str, Any]:
    """What Stripe answers for a deleted customer (on delete, and on retrieve afterwards)."""
    return {"id": customer_id, "object": "customer", "deleted": True}


def aggregate(formula: str, events: list[MeterEvent]) -> float:
    if formula == "count":
        return float(len(events))
    if formula == "last":
        latest = max(events, key=lambda e: (e.timestamp, e.received_at), default=None)
        return float(Decimal(latest.value)) if latest and latest.value is not None else 0.0
    return float(sum((Decimal(e.value) for e in events if e.value is not None), Decimal(0)))


@dataclasses.dataclass
class IdempotencyRecord:
    fingerprint: Any
    # None while the first request with the key is still running.
    answer: tuple[int, dict[str, Any], dict[str, str], str] | None = None
    stored_at: float = 0.0


# An error report's group: (meter id or None for no_meter_found, window start, window end).
ReportWindow = tuple[str | None, float, float]


class Store:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            # A validation pass that began before the reset must not settle into the new state.
            self._generation += 1
            self._events: list[MeterEvent] = []
            self._pending: list[MeterEvent] = []
            self._invalid: list[tuple[MeterEvent, str, str]] = []
            self._identifiers: dict[str, float] = {}  # first receipt, of valid and pending events
            self._unreported: dict[ReportWindow, list[Any]] = {}  # invalid (event, problem, meter)
            self._customers: dict[str, dict[str, Any]] = {}
            self._meters: dict[str, dict[str, Any]] = {}
            self._core_events: list[dict[str, Any]] = []
            self._sessions: dict[str, float] = {}
            self._idempotency: dict[str, IdempotencyRecord] = {}
            self._in_flight: set[tuple[str, str]] = set()
            self._calls: list[dict[str, Any]] = []

    # -- customers ------------------------------------------------------------------

    def add_customer(self, customer: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if customer["id"] in self._customers:
                raise StripeError(
                    400,
                    f"A customer with id {customer['id']} already exists.",
                    code="resource_already_exists",
                    param="id",
                )
            self._customers[customer["id"]] = customer
            return dict(customer)

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """The customer, its deleted form once deleted, or None if it never existed."""
        with self._lock:
            customer = self._customers.get(customer_id)
            return dict(customer) if customer else None

    def customer_exists(self, customer_id: str) -> bool:
        """Created and not deleted."""
        with self._lock:
            customer = self._customers.get(customer_id)
            return customer is not None and not customer.get("deleted")

    def delete_customer(self, customer_id: str) -> dict[str, Any] | None:
        """The deleted form, or None if there is no such (undeleted) customer."""
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None or customer.get("deleted"):
                return None
            self._customers[customer_id] = deleted_customer(customer_id)
            return dict(self._customers[customer_id])

    def customers(self, email: str | None = None) -> list[dict[str, Any]]:
        """Customers not deleted, newest first (Stripe's list order)."""
        with self._lock:
            customers = [
                dict(c) for c in self._customers.values() if not c.get("deleted") and email in (None, c["email"])
            ]
        return customers[::-1]

    # -- meters ---------------------------------------------------------------------

    def _meter_for(self, event_name: str) -> dict[str, Any] | None:
        matching = [m for m in self._meters.values() if m["event_name"] == event_name]
        active = [m for m in matching if m["status"] == "active"]
        return (active or matching or [None])[-1]

    def meter_for(self, event_name: str) -> dict[str, Any] | None:
        """The meter events named ``event_name`` go to (an active one first), or None."""
        with self._lock:
            meter = self._meter_for(event_name)
            return dict(meter) if meter else None

    def add_meter(self, meter: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            existing = self._meter_for(meter["event_name"])
            if existing and existing["status"] == "active":
                raise StripeError(
                    400,
                    f"An active meter already exists for event_name {meter['event_name']!r}: {existing['id']}.",
                    code="resource_already_exists",
                    param="event_name",
                )
            self._meters[meter["id"]] = meter
            return dict(meter)

    def meter(self, meter_id: str) -> dict[str, Any] | None:
        with self._lock:
            meter = self._meters.get(meter_id)
            return dict(meter) if meter else None

    def meters(self, status: str | None = None) -> list[dict[str, Any]]:
        """Meters, newest first (Stripe's list order)."""
        with self._lock:
            meters = [dict(m) for m in self._meters.values() if status in (None, m["status"])]
        return meters[::-1]

    def set_meter_status(self, meter_id: str, status: str) -> dict[str, Any] | None:
        with self._lock:
            meter = self._meters.get(meter_id)
            if meter is None:
                return None
            now = int(self.clock.now())
            meter["status"] = status
            meter["status_transitions"] = {"deactivated_at": now if status == "inactive" else None}
            meter["updated"] = now
            return dict(meter)

    # -- meter events ---------------------------------------------------------------

    def record(self, events: Iterable[MeterEvent], *, duplicates: str, pending: bool = False) -> list[MeterEvent]:
        """Accept events, as valid or (``pending``) to be judged later; returns those accepted.

        ``duplicates="reject"`` raises ``resource_already_exists`` for a known identifier
        (v1, one event); ``"skip"`` drops it silently (v2 stream).
        """
        accepted = []
        with self._lock:
            for event in events:
                first_receipt = self._identifiers.get(event.identifier)
                if first_receipt is not None and event.received_at - first_receipt < IDENTIFIER_WINDOW_SECONDS:
                    if duplicates == "reject":
                        raise StripeError(
                            400,
                            f"An event already exists with identifier {event.identifier}.",
                            code="resource_already_exists",
                            param="identifier",
                        )
                    continue
                self._identifiers[event.identifier] = event.received_at
                (self._pending if pending else self._events).append(event)
                accepted.append(event)
        return accepted

    def oldest_pending(self) -> float | None:
        """The receipt time of the oldest pending event, or None."""
        with self._lock:
            return min((event.received_at for event in self._pending), default=None)

    def take_pending(self, received_by: float) -> tuple[int, list[MeterEvent]]:
        """The pending events received at or before ``received_by``, with the store's
        generation to hand back to ``settle``. They stay pending (listed, cancelable)
        until ``settle`` stores their verdicts: an event being judged is never nowhere."""
        with self._lock:
            return self._generation, [event for event in self._pending if event.received_at <= received_by]

    def settle(self, generation: int, valid: list[MeterEvent], invalid: list[Any], report_window: float) -> bool:
        """Store judged events (as ``take_pending`` gave them): ``valid`` ones count,
        ``invalid`` ones (event, problem, meter) are dropped, free their identifiers, and
        wait for their error report in the window of ``report_window`` seconds their
        receipt falls in. A cancel that came while they were judged holds. False (nothing
        stored) after a reset."""
        with self._lock:
            if generation != self._generation:
                return False
            judged = {(event.identifier, event.received_at) for event in valid}
            judged |= {(event.identifier, event.received_at) for event, _, _ in invalid}
            canceled = {
                (event.identifier, event.received_at): event.canceled_at
                for event in self._pending if event.canceled_at is not None
            }
            self._pending = [event for event in self._pending if (event.identifier, event.received_at) not in judged]
            self._events.extend(
                dataclasses.replace(event, canceled_at=canceled.get((event.identifier, event.received_at), event.canceled_at))
                for event in valid
            )
            for event, problem, meter in invalid:
                self._invalid.append((event, problem.code, problem.message))
                if self._identifiers.get(event.identifier) == event.received_at:
                    del self._identifiers[event.identifier]
                start = event.received_at - event.received_at % report_window
                key = (meter["id"] if meter else None, start, start + report_window)
                self._unreported.setdefault(key, []).append((event, problem, meter))
            return True

    def next_report_due(self) -> float | None:
        """When the earliest error report window ends, or None if none is waiting."""
        with self._lock:
            return min((end for _, _, end in self._unreported), default=None)

    def take_due_reports(self, now: float) -> list[tuple[ReportWindow, list[Any]]]:
        """Remove and return the report windows that have ended by ``now`` and whose events
        are all judged (nothing pending was received before the window's end), oldest first."""
        with self._lock:
            oldest_pending = min((event.received_at for event in self._pending), default=math.inf)
            due = [key for key in self._unreported if key[2] <= now and key[2] <= oldest_pending]
            return [(key, self._unreported.pop(key)) for key in sorted(due, key=lambda key: (key[1], key[0] or ""))]

    def cancel(self, event_name: str, identifier: str) -> MeterEvent | None:
        """Cancel the valid or pending event with this identifier received within the last
        24 h; the canceled event, or None if there is none to cancel (already canceled
        ones included)."""
        now = self.clock.now()
        with self._lock:
            for events in (self._events, self._pending):
                for index, event in enumerate(events):
                    if (
                        event.identifier == identifier
                        and event.event_name == event_name
                        and event.canceled_at is None
                        and now - event.received_at < CANCEL_WINDOW_SECONDS
                    ):
                        events[index] = dataclasses.replace(event, canceled_at=now)
                        return events[index]
        return None

    def canceled(self, event_name: str, identifier: str) -> bool:
        """Whether an event with this name and identifier has been canceled."""
        with self._lock:
            return any(
                e.identifier == identifier and e.event_name == event_name and e.canceled_at is not None
                for e in (*self._events, *self._pending)
            )

    def meter_events(self, status: str = "valid") -> list[dict[str, Any]]:
        """Meter events with ``status`` (valid, pending, invalid) as listed, oldest first.

        Invalid ones also show their payload and Stripe's error code and message.
        """
        with self._lock:
            if status == "invalid":
                return [
                    {**event.listing(), "payload": dict(event.payload), "error_code": code, "error_message": message}
                    for event, code, message in self._invalid
                ]
            return [event.listing() for event in (self._pending if status == "pending" else self._events)]

    def summarize(
        self, meter: dict[str, Any], customer: str, start: int, end: int, window: int | None, lag: float
    ) -> list[dict[str, Any]]:
        """``billing.meter_event_summary`` objects for the meter's events in [start, end),
        newest first, counting only what is visible ``lag`` seconds after it happened
        (``MeterEvent.counted``).

        Without a window: one summary for the whole range (also when it is empty). With a
        window (3600 or 86400 s, aligned on UTC): one per window that has events.
        """
        now = self.clock.now()
        with self._lock:
            events = [
                e
                for e in self._events
                if e.meter_id == meter["id"] and e.customer == customer and start <= e.timestamp < end and e.counted(now, lag)
            ]
        formula = meter["default_aggregation"]["formula"]
        if window is None:
            buckets = {(start, end): events}
        else:
            buckets = {}
            for event in events:
                floor = event.timestamp - event.timestamp % window
                buckets.setdefault((max(start, floor), min(end, floor + window)), []).append(event)
        summaries = []
        for (low, high), bucket in sorted(buckets.items(), reverse=True):
            digest = hashlib.sha256(f"{meter['id']}|{customer}|{low}|{high}".encode()).hexdigest()[:24]
            summaries.append(
                {
                    "id": f"mtrusg_test_{digest}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": aggregate(formula, bucket),
                    "end_time": high,
                    "livemode": False,
                    "meter": meter["id"],
                    "start_time": low,
                }
            )
        return summaries

    # -- v2 events ---------------------------------------------------------------------

    def add_core_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._core_events.append(event)

    def core_event(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((event for event in self._core_events if event["id"] == event_id), None)

    def core_events(self) -> list[dict[str, Any]]:
        """v2 events (``v2.core.event``), newest first."""
        with self._lock:
            return self._core_events[::-1]

    # -- the calls answered (for tests that count what a client asked) -------------------

    def log_call(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._calls.append({"method": method, "path": path, "status": status, "at": time.time()})

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        """The Stripe API calls answered (``path``: only those to it), oldest first."""
        with self._lock:
            return [call for call in self._calls if path is None or call["path"] == path]

    # -- concurrency rule -------------------------------------------------------------

    def claim(self, keys: Iterable[tuple[str, str]]) -> bool:
        """Mark (customer, event_name) pairs as in a call; False if any already is."""
        keys = set(keys)
        with self._lock:
            if keys & self._in_flight:
                return False
            self._in_flight |= keys
            return True

    def release(self, keys: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            # discard, not remove: a reset may have cleared them meanwhile.
            self._in_flight.difference_update(keys)

    # -- v2 meter event sessions ------------------------------------------------------

    def add_session(self, token: str, expires_at: float) -> None:
        with self._lock:
            self._sessions[token] = expires_at

    def session_valid(self, token: str) -> bool:
        with self._lock:
            expires_at = self._sessions.get(token)
        return expires_at is not None and self.clock.now() < expires_at

    # -- idempotency --------------------------------------------------------------------

    def idempotency_begin(self, key: Any, fingerprint: Any) -> tuple[str, IdempotencyRecord]:
        """("new" | "replay" | "busy" | "mismatch", record) for a request with ``key``; a
        stored answer is forgotten 24 h after it was stored."""
        now = self.clock.now()
        with self._lock:
            record = self._idempotency.get(key)
            if record is not None and record.answer is not None and now - record.stored_at >= IDEMPOTENCY_SECONDS:
                record = None
            if record is None:
                record = self._idempotency[key] = IdempotencyRecord(fingerprint)
                return "new", record
            if record.fingerprint != fingerprint:
                return "mismatch", record
            return ("busy" if record.answer is None else "replay"), record

    def idempotency_finish(
        self, key: Any, record: IdempotencyRecord, answer: tuple[int, dict[str, Any], dict[str, str], str] | None
    ) -> None:
        """Store the answer to replay, or (None) forget the key so a retry runs again."""
        with self._lock:
            # A reset while the request ran has already forgotten the key: leave it so.
            if self._idempotency.get(key) is not record:
                return
            if answer is None:
                del self._idempotency[key]
            else:
                record.answer = answer
                record.stored_at = self.clock.now()
