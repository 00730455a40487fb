"""The server's in-memory store: customers, meters, meter events, v2 events, sessions,
idempotency records.

One lock guards everything; every method takes it for a short, non-blocking critical
section (nobody sleeps while holding it). Identifiers are one namespace for v1 and v2
events, as a client needs them to be for "the identifier dedupes" to hold.

A meter event is ``valid`` (counted in summaries) or, when it came through the v2 stream,
first ``pending`` until the validator judges it, then ``valid`` or ``invalid`` (dropped:
listed for inspection, never counted, its identifier free again for a corrected resend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from local_stripe.wire import StripeError, new_id

DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"


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
        }


def new_meter(
    event_name: str,
    *,
    display_name: str | None = None,
    formula: str = "sum",
    customer_key: str = DEFAULT_CUSTOMER_KEY,
    value_key: str = DEFAULT_VALUE_KEY,
    event_time_window: str | None = None,
) -> dict[str, Any]:
    """A ``billing.meter`` object as Stripe returns it."""
    now = int(time.time())
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


def new_customer(customer_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A ``customer`` object as Stripe returns it; ``fields`` among name, email, description,
    phone, metadata. Stripe's ids are ``cus_`` and 14 letters or digits."""
    alphabet = string.ascii_letters + string.digits
    return {
        "id": customer_id or "cus_" + "".join(secrets.choice(alphabet) for _ in range(14)),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": int(time.time()),
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


class Store:
    def __init__(self) -> None:
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
            self._identifiers: set[str] = set()  # of valid and pending events
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
            now = int(time.time())
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
                if event.identifier in self._identifiers:
                    if duplicates == "reject":
                        raise StripeError(
                            400,
                            f"An event already exists with identifier {event.identifier}.",
                            code="resource_already_exists",
                            param="identifier",
                            replayable=True,
                        )
                    continue
                self._identifiers.add(event.identifier)
                (self._pending if pending else self._events).append(event)
                accepted.append(event)
        return accepted

    def oldest_pending(self) -> float | None:
        """The receipt time of the oldest pending event, or None."""
        with self._lock:
            return min((event.received_at for event in self._pending), default=None)

    def take_pending(self, received_by: float) -> tuple[int, list[MeterEvent]]:
        """Remove and return the pending events received at or before ``received_by``, with
        the store's generation to hand back to ``settle``."""
        with self._lock:
            due = [event for event in self._pending if event.received_at <= received_by]
            self._pending = [event for event in self._pending if event.received_at > received_by]
            return self._generation, due

    def settle(self, generation: int, valid: list[MeterEvent], invalid: list[tuple[MeterEvent, str, str]]) -> bool:
        """Store judged events: ``valid`` ones count, ``invalid`` ones (event, code, message)
        are dropped and free their identifiers. False (nothing stored) after a reset."""
        with self._lock:
            if generation != self._generation:
                return False
            self._events.extend(valid)
            self._invalid.extend(invalid)
            self._identifiers.difference_update(event.identifier for event, _, _ in invalid)
            return True

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
        self, meter: dict[str, Any], customer: str, start: int, end: int, window: int | None
    ) -> list[dict[str, Any]]:
        """``billing.meter_event_summary`` objects for events in [start, end), newest first.

        Without a window: one summary for the whole range (also when it is empty). With a
        window (3600 or 86400 s, aligned on UTC): one per window that has events.
        """
        with self._lock:
            events = [
                e
                for e in self._events
                if e.event_name == meter["event_name"] and e.customer == customer and start <= e.timestamp < end
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
        return expires_at is not None and time.time() < expires_at

    # -- idempotency --------------------------------------------------------------------

    def idempotency_begin(self, key: str, fingerprint: Any) -> tuple[str, IdempotencyRecord]:
        """("new" | "replay" | "busy" | "mismatch", record) for a request with ``key``."""
        with self._lock:
            record = self._idempotency.get(key)
            if record is None:
                record = self._idempotency[key] = IdempotencyRecord(fingerprint)
                return "new", record
            if record.fingerprint != fingerprint:
                return "mismatch", record
            return ("busy" if record.answer is None else "replay"), record

    def idempotency_finish(
        self, key: str, record: IdempotencyRecord, answer: tuple[int, dict[str, Any], dict[str, str], str] | None
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
