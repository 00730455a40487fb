"""The v2 meter event stream's asynchronous validation, and the error reports it emits.

Stripe accepts a stream call's events at once (``{}``) and judges them later. So does this
server: each pending event is judged (``events.judge``) ``validation_delay_seconds`` after
its receipt, by one thread. A validation pass takes every event then due; the valid ones
count from then on, the invalid ones are dropped and reported as v2 events
(``v2.core.event``, Stripe's documented ``data``):

* one ``v1.billing.meter.error_report_triggered`` per meter with invalid events, its
  ``related_object`` the meter;
* one ``v1.billing.meter.no_meter_found`` for the events whose event_name has no meter
  (code ``no_meter``; no related object).

Each report counts its errors per code, with at most ``SAMPLES_PER_CODE`` sample errors
each, and spans (``validation_start``, ``validation_end``) the receipt times of the pass's
events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from local_stripe.background import BackgroundThread
from local_stripe.events import Problem, judge
from local_stripe.faults import Faults
from local_stripe.state import MeterEvent, Store
from local_stripe.wire import new_id, rfc3339

log = logging.getLogger("local_stripe.validator")

SAMPLES_PER_CODE = 3


class Validator(BackgroundThread):
    """Judges pending v2 events when due, in its own thread or (``validate``) the caller's;
    ``emit`` receives each report."""

    def __init__(self, store: Store, faults: Faults, emit: Callable[[dict[str, Any]], None]) -> None:
        self._store = store
        self._faults = faults
        self._emit = emit
        super().__init__("local-stripe-validator")
        # Passes one at a time, so "validate everything now" returns only once an
        # overlapping pass of the thread has settled too.
        self._one_pass = threading.Lock()

    def received(self) -> None:
        """Events are pending: judge them now when the delay is 0, else reschedule."""
        if self._faults.validation_delay_seconds <= 0:
            self.validate()
        else:
            self.wake()

    def wake(self) -> None:
        """Look again at what is pending and at the delay (it may have changed)."""
        with self._wake:
            self._wake.notify()

    def validate(self, received_by: float = math.inf) -> None:
        """One pass over the events received by then (default: everything pending)."""
        with self._one_pass:
            generation, due = self._store.take_pending(received_by)
            if not due:
                return
            valid: list[MeterEvent] = []
            invalid: list[tuple[MeterEvent, Problem, dict[str, Any] | None]] = []
            for event in due:
                meter = self._store.meter_for(event.event_name)
                verdict = judge(event, meter=meter, customer_exists=self._store.customer_exists)
                if isinstance(verdict, Problem):
                    invalid.append((event, verdict, meter))
                else:
                    valid.append(verdict)
            settled = self._store.settle(
                generation, valid, [(event, problem.code, problem.message) for event, problem, _ in invalid]
            )
            if settled and invalid:
                window = (min(e.received_at for e in due), max(e.received_at for e in due))
                for report in error_reports(invalid, window):
                    self._emit(report)

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._stopping:
                        return
                    delay = self._faults.validation_delay_seconds
                    oldest = self._store.oldest_pending()
                    if oldest is not None and oldest + delay <= time.time():
                        break
                    self._wake.wait(None if oldest is None else oldest + delay - time.time())
            try:
                self.validate(time.time() - delay)
            except Exception:  # keep validating later events
                log.exception("validation pass failed")


def error_reports(
    invalid: list[tuple[MeterEvent, Problem, dict[str, Any] | None]], window: tuple[float, float]
) -> list[dict[str, Any]]:
    """The v2 events reporting one pass's invalid (event, problem, meter or None)."""
    by_meter: dict[str | None, list[tuple[MeterEvent, Problem]]] = {}
    for event, problem, meter in invalid:
        by_meter.setdefault(meter["id"] if meter else None, []).append((event, problem))
    reports = []
    for key, failures in by_meter.items():
        if key is None:
            reports.append(_report("v1.billing.meter.no_meter_found", None, failures, window))
        else:
            related = {"id": key, "type": "billing.meter", "url": f"/v1/billing/meters/{key}"}
            reports.append(_report("v1.billing.meter.error_report_triggered", related, failures, window))
    return reports


def _report(
    type: str,
    related_object: dict[str, str] | None,
    failures: list[tuple[MeterEvent, Problem]],
    window: tuple[float, float],
) -> dict[str, Any]:
    by_code: dict[str, list[tuple[MeterEvent, Problem]]] = {}
    for event, problem in failures:
        by_code.setdefault(problem.code, []).append((event, problem))
    count = len(failures)
    summary = "There is 1 invalid event" if count == 1 else f"There are {count} invalid events"
    return {
        "id": new_id("evt_test"),
        "object": "v2.core.event",
        "context": None,
        "created": rfc3339(time.time()),
        "data": {
            "developer_message_summary": summary,
            "reason": {
                "error_count": count,
                "error_types": [
                    {
                        "code": code,
                        "error_count": len(items),
                        "sample_errors": [
                            {"error_message": problem.message, "request": {"identifier": event.identifier}}
                            for event, problem in items[:SAMPLES_PER_CODE]
                        ],
                    }
                    for code, items in by_code.items()
                ],
            },
            "validation_end": rfc3339(window[1]),
            "validation_start": rfc3339(window[0]),
        },
        "livemode": False,
        "reason": None,
        "related_object": related_object,
        "type": type,
    }
