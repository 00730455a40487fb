"""The v2 meter event stream's asynchronous validation, and the error reports it emits.

Stripe accepts a stream call's events at once (``{}``) and judges them later. So does this
server: each pending event is judged (``events.judge``) ``validation_delay_seconds`` after
its receipt, by one thread, by the server's clock. The valid ones count from then on (after
the summary lag), the invalid ones are dropped and wait for their error report.

Reports cover windows Stripe picks: here windows of ``report_window_seconds`` aligned on
multiples of it, by receipt time. Each window's report is emitted once the window has
ended and every event received in it is judged, as a v2 event (``v2.core.event``,
Stripe's documented ``data``):

* one ``v1.billing.meter.error_report_triggered`` per meter and window with invalid
  events, its ``related_object`` the meter;
* one ``v1.billing.meter.no_meter_found`` per window for the events whose event_name has
  no meter (code ``no_meter``; no related object).

Each report counts its errors per code, with at most ``SAMPLES_PER_CODE`` sample errors
each, and spans (``validation_start``, ``validation_end``) its window. A sample's
``request.identifier`` is the stream call's idempotency key or the event's identifier
(``sample_request_identifier``).
"""

from __future__ import annotations

import logging
import math
import threading
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
    """Judges pending v2 events and emits the error reports when due, in its own thread or
    (``validate``, ``run_due``) the caller's; ``emit`` receives each report."""

    def __init__(self, store: Store, faults: Faults, emit: Callable[[dict[str, Any]], None]) -> None:
        self._store = store
        self._clock = store.clock
        self._faults = faults
        self._emit = emit
        super().__init__("local-stripe-validator")
        # Passes one at a time, so "validate everything now" returns only once an
        # overlapping pass of the thread has settled too.
        self._one_pass = threading.Lock()

    def received(self) -> None:
        """Events are pending: judge them now when the delay is 0, else reschedule."""
        if self._faults.current.validation_delay_seconds <= 0:
            self.validate()
        else:
            self.wake()

    def wake(self) -> None:
        """Look again at what is pending, at the clock and at the settings (they may have changed)."""
        with self._wake:
            self._wake.notify()

    def validate(self, received_by: float = math.inf) -> None:
        """Judge the events received by then (default: everything pending), then emit the
        reports of the windows that have ended."""
        with self._one_pass:
            self._judge(received_by)
            sample = self._faults.current.sample_request_identifier
            now = self._clock.now()
            for (_, start, end), invalid in self._store.take_due_reports(now):
                for report in error_reports(invalid, (start, end), sample, now):
                    self._emit(report)
        self.wake()  # the thread waits for the next window now

    def run_due(self) -> None:
        """What is due by the clock: events received at least the delay ago, and reports."""
        self.validate(self._clock.now() - self._faults.current.validation_delay_seconds)

    def _judge(self, received_by: float) -> None:
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
        self._store.settle(generation, valid, invalid, self._faults.current.report_window_seconds)

    def _seconds_until_due(self) -> float:
        """How long until an event is due for judging or a report window for emission."""
        oldest = self._store.oldest_pending()
        report_end = self._store.next_report_due()
        moments = []
        if oldest is not None:
            moments.append(oldest + self._faults.current.validation_delay_seconds)
        if report_end is not None and (oldest is None or oldest >= report_end):
            moments.append(report_end)  # else it waits for that event's judgment first
        return min(moments, default=math.inf) - self._clock.now()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._stopping:
                        return
                    wait = self._seconds_until_due()
                    if wait <= 0:
                        break
                    self._wake.wait(None if wait == math.inf else wait)
            try:
                self.run_due()
            except Exception:  # keep validating later events
                log.exception("validation pass failed")


def error_reports(
    invalid: list[tuple[MeterEvent, Problem, dict[str, Any] | None]],
    window: tuple[float, float],
    sample: str = "idempotency_key",
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The v2 events reporting invalid (event, problem, meter or None) of one window, one
    per meter; ``sample`` is what sample errors name their request by; created ``now``
    (default: the window's end)."""
    by_meter: dict[str | None, list[tuple[MeterEvent, Problem]]] = {}
    for event, problem, meter in invalid:
        by_meter.setdefault(meter["id"] if meter else None, []).append((event, problem))
    created = window[1] if now is None else now
    reports = []
    for key, failures in by_meter.items():
        if key is None:
            reports.append(_report("v1.billing.meter.no_meter_found", None, failures, window, sample, created))
        else:
            related = {"id": key, "type": "billing.meter", "url": f"/v1/billing/meters/{key}"}
            reports.append(_report("v1.billing.meter.error_report_triggered", related, failures, window, sample, created))
    return reports


def _request_identifier(event: MeterEvent, sample: str) -> str:
    """The idempotency key (the event's identifier for an event made without a request)."""
    if sample == "idempotency_key" and event.idempotency_key is not None:
        return event.idempotency_key
    return event.identifier


def _report(
    type: str,
    related_object: dict[str, str] | None,
    failures: list[tuple[MeterEvent, Problem]],
    window: tuple[float, float],
    sample: str,
    created: float,
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
        "created": rfc3339(created),
        "data": {
            "developer_message_summary": summary,
            "reason": {
                "error_count": count,
                "error_types": [
                    {
                        "code": code,
                        "error_count": len(items),
                        "sample_errors": [
                            {"error_message": problem.message, "request": {"identifier": _request_identifier(event, sample)}}
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
