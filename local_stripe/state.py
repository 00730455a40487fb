"""The server's in-memory store: meters, accepted meter events, sessions, idempotency records.

One lock guards everything; every method takes it for a short, non-blocking critical
section (nobody sleeps while holding it). Identifiers are one namespace for v1 and v2
events, as a client needs them to be for "the identifier dedupes" to hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from local_stripe.faults import Faults
from local_stripe.wire import StripeError, new_id

DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"


@dataclasses.dataclass(frozen=True)
class MeterEvent:
    """An accepted meter event, with the customer and value read through its meter's keys."""

    identifier: str
    event_name: str
    payload: dict[str, str]
    customer: str
    value: str | None
    timestamp: int
    via: str  # "v1" or "v2"
    created: int
    received_at: float

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
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._events: list[MeterEvent] = []
            self._identifiers: set[str] = set()
            self._meters: dict[str, dict[str, Any]] = {}
            self._sessions: dict[str, float] = {}
            self._idempotency: dict[str, IdempotencyRecord] = {}
            self._in_flight: set[tuple[str, str]] = set()

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

    def record(self, events: Iterable[MeterEvent], *, duplicates: str) -> list[MeterEvent]:
        """Accept events; returns those accepted.

        ``duplicates="reject"`` raises ``resource_already_exists`` for a known identifier
        (v1, one event); ``"skip"`` drops it silently (v2 stream). The first event with
        a new event_name creates a default sum meter for it, a convenience real Stripe
        does not offer (there, events without a meter are dropped and reported later).
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
                if self._meter_for(event.event_name) is None:
                    meter = new_meter(event.event_name)
                    self._meters[meter["id"]] = meter
                self._identifiers.add(event.identifier)
                self._events.append(event)
                accepted.append(event)
        return accepted

    def events(self) -> list[MeterEvent]:
        with self._lock:
            return list(self._events)

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


@dataclasses.dataclass
class LocalStripe:
    """Everything one server holds: its store and its fault settings.

    Kept in ``app.extensions["local_stripe"]`` so tests can reach it without HTTP.
    """

    store: Store = dataclasses.field(default_factory=Store)
    faults: Faults = dataclasses.field(default_factory=Faults)

    def reset(self) -> None:
        self.store.reset()
        self.faults.reset()
