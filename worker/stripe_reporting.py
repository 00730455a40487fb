"""Reporting ``agent700_cost`` to Stripe Billing Meters with the real ``stripe`` SDK.

Every meter event carries the log row's id as its ``identifier``: however often a row is
sent, by the SDK, by Celery or by the sweeper, Stripe counts it once within its 24-hour
identifier window (``shared.usage_rows`` keeps sends inside it). Every request carries an
``Idempotency-Key`` derived from the row id(s).

Two paths, chosen by ``STRIPE_METER_API``:

- ``v2`` (default): the meter event stream, up to 100 events per call, authenticated by
  a meter event session token that lives 15 minutes and is renewed before it expires.
  The key names the set of rows; a v2 retry under it re-runs what failed (Stripe's v2
  idempotency). A 400 refuses the whole call: it is split in halves until the events
  Stripe refuses are found, and only those fail; it is counted and logged, never
  quietly sent another way.
- ``v1``: one ``POST /v1/billing/meter_events`` per event. Stripe stores a v1 key's first
  answer, a 500 included, and replays it: so each attempt after a refusal for now uses a
  fresh key (the row id and the attempt), and the identifier deduplicates.

A void's calls (``worker.voiding``) go the same way: ``cancel()``, a v2 meter event
adjustment under one key per row (v2 stores successes only, so a retry re-runs what
failed), and ``send_one()``, a v1 meter event under a key fresh per attempt.

Each reported row keeps its call (``shared.usage_rows.StripeCall``): the error reports
find rows by the requests they name and the times they were sent.

What an event may hold and how the meter must be set up are ``shared.stripe_meter``'s
rules; the client (its retries and timeout) is ``shared.stripe_client``'s.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

import stripe

from shared import metrics, stripe_meter
from shared.config import Settings
from shared.stripe_client import stripe_client
from shared.stripe_meter import MeterEvent
from shared.usage_rows import StripeCall

log = logging.getLogger(__name__)
# How long a process trusts what it found of the billing meter.
METER_CHECK_SECONDS = 30
SESSION_RENEW_MARGIN = dt.timedelta(minutes=1)


class Outcome(enum.Enum):
    REPORTED = "reported"  # Stripe has it (now, or from an earlier attempt)
    FAILED = "failed"  # Stripe will not take it as it is; an operator must act
    RETRY = "retry"  # a transient refusal; try again later
    MISSING = "missing"  # (a cancel) Stripe holds no such event to cancel


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str | None = None
    call: StripeCall | None = None  # the call that reported it


def idempotency_key(row_ids: list[uuid.UUID], attempt: int = 0) -> str:
    if len(row_ids) == 1:
        return f"agent700-meter-{row_ids[0]}" + (f"-{attempt}" if attempt else "")
    digest = hashlib.sha256(",".join(sorted(map(str, row_ids))).encode()).hexdigest()
    return f"agent700-meter-batch-{digest}"


def _already_exists(error: stripe.StripeError) -> bool:
    message = (getattr(error, "user_message", None) or str(error) or "").lower()
    return getattr(error, "code", None) == "resource_already_exists" or "already exists with identifier" in message


def _classify(error: stripe.StripeError, call: StripeCall) -> Result:
    if _already_exists(error):
        return Result(Outcome.REPORTED, call=call)
    status = getattr(error, "http_status", None)
    # A refused key (401/403: rotated, revoked, missing a permission) says nothing about
    # the events: they wait, recorded, until the key is fixed, rather than all failing.
    transient = isinstance(
        error,
        (
            stripe.RateLimitError, stripe.APIConnectionError, stripe.TemporarySessionExpiredError,
            stripe.AuthenticationError, stripe.PermissionError,
        ),
    )
    if transient or status in (409, 429) or (status is not None and status >= 500) or (status is None and isinstance(error, stripe.APIError)):
        return Result(Outcome.RETRY, f"Stripe answered {status or 'no response'}: {error.user_message or error}")
    return Result(Outcome.FAILED, f"Stripe refused the meter event ({status}): {error.user_message or error}")


class StripeMeter:
    def __init__(self, settings: Settings, api: str = "v2"):
        self.event_name = settings.stripe_meter_event_name
        self.api = api
        # How long Stripe may take to process what it accepted (summaries, a send to cancel).
        self.summary_settle = dt.timedelta(seconds=settings.stripe_summary_settle_seconds)
        self.client = stripe_client(settings)
        self._session_token: str | None = None
        self._session_expires_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._meter_problem: str | None = None
        self._meter_checked_until = 0.0

    def meter_problem(self) -> str | None:
        """Why Stripe cannot count this service's events now (no meter for the event
        name, inactive, set up otherwise); None when it can. Asked at most every
        ``METER_CHECK_SECONDS``; if Stripe cannot be asked, the sends will tell."""
        now = time.monotonic()
        if now >= self._meter_checked_until:
            try:
                meters = self._observed("v1_meters", [], self.client.v1.billing.meters.list, {"limit": stripe_meter.PAGE_SIZE})
                _, self._meter_problem = stripe_meter.setup_problem(meters.auto_paging_iter(), self.event_name)
                self._meter_checked_until = now + METER_CHECK_SECONDS
            except stripe.StripeError as error:
                log.warning("could not look at Stripe's billing meters: %s", error)
                return None
        return self._meter_problem

    def _observed(self, call_name: str, row_ids: list[uuid.UUID], sdk_call, *args, **kwargs):
        """One SDK call, counted and timed by outcome, and logged with the event ids it carries."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return sdk_call(*args, **kwargs)
        except stripe.StripeError as error:
            outcome = type(error).__name__
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.stripe_calls.labels(call_name, outcome).inc()
            metrics.stripe_latency.labels(call_name).observe(elapsed)
            fields = {"call": call_name, "outcome": outcome, "duration_ms": round(elapsed * 1000, 3)}
            if row_ids:
                fields["event_ids"] = [str(row_id) for row_id in row_ids]
            log.info("stripe call", extra=fields)

    def report(self, events: list[MeterEvent]) -> dict[uuid.UUID, Result]:
        """Send the events; the outcome of each. Stops at the first transient refusal."""
        results: dict[uuid.UUID, Result] = {}
        send = self._send_stream if self.api == "v2" else self._send_each
        for start in range(0, len(events), stripe_meter.STREAM_MAX_EVENTS):
            chunk = events[start : start + stripe_meter.STREAM_MAX_EVENTS]
            results |= send(chunk)
            if any(r.outcome is Outcome.RETRY for r in results.values()):
                retry = next(r for r in results.values() if r.outcome is Outcome.RETRY)
                for event in events[start + len(chunk) :]:
                    results[event.row_id] = retry
                break
        return results

    def send_one(self, event: MeterEvent, identifier: str, key: str) -> Result:
        """One v1 meter event of ``event``'s value under ``identifier``."""
        call = StripeCall(dt.datetime.now(dt.UTC), key, self.event_name)
        try:
            self._observed("v1_meter_event", [event.row_id], self.client.v1.billing.meter_events.create,
                params={
                    "event_name": self.event_name,
                    "payload": {"stripe_customer_id": event.stripe_customer_id, "value": str(event.value)},
                    "identifier": identifier,
                    "timestamp": int(event.occurred_at.timestamp()),
                },
                options={"idempotency_key": key},
            )
            return Result(Outcome.REPORTED, call=call)
        except stripe.StripeError as error:
            return _classify(error, call)

    def cancel(self, row_id: uuid.UUID, event_name: str, identifier: str, key: str) -> Result:
        """Cancel the meter event ``identifier`` of ``event_name`` (Stripe's meter event
        adjustment; only within 24 h of Stripe receiving it). REPORTED once Stripe took
        the cancel (or had it already), MISSING if Stripe holds no such event."""
        call = StripeCall(dt.datetime.now(dt.UTC), key, event_name)
        try:
            self._observed("v2_adjustment", [row_id], self.client.v2.billing.meter_event_adjustments.create,
                params={"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}},
                options={"idempotency_key": key},
            )
            return Result(Outcome.REPORTED, call=call)
        except stripe.AlreadyCanceledError:
            return Result(Outcome.REPORTED, call=call)
        except stripe.StripeError as error:
            if getattr(error, "code", None) == "resource_missing":
                return Result(Outcome.MISSING, f"Stripe holds no such event: {error.user_message or error}", call)
            return _classify(error, call)

    def _send_each(self, events: list[MeterEvent]) -> dict[uuid.UUID, Result]:
        results = {}
        for index, event in enumerate(events):
            key = idempotency_key([event.row_id], event.earlier_attempts)
            results[event.row_id] = self.send_one(event, str(event.row_id), key)
            if results[event.row_id].outcome is Outcome.RETRY:
                for rest in events[index + 1 :]:
                    results[rest.row_id] = results[event.row_id]
                break
        return results

    def _session(self) -> str:
        now = dt.datetime.now(dt.UTC)
        if self._session_token is None or now >= self._session_expires_at - SESSION_RENEW_MARGIN:
            session = self._observed("v2_session", [], self.client.v2.billing.meter_event_session.create)
            self._session_token = session.authentication_token
            # The v2 API sends expires_at as RFC 3339 text, which the SDK hands over as it is.
            self._session_expires_at = stripe_meter.parse_time(session.expires_at)
        return self._session_token

    def _send_stream(self, events: list[MeterEvent]) -> dict[uuid.UUID, Result]:
        # The idempotency key names the set of rows; the body must be a function of that
        # set too, or a second report of the same rows in another order (rows recorded in
        # one transaction tie on recorded_at) is a different request under the same key,
        # which Stripe refuses for good.
        events = sorted(events, key=lambda e: str(e.row_id))
        key = idempotency_key([e.row_id for e in events])
        body = {
            "events": [
                {
                    "event_name": self.event_name,
                    "payload": {"stripe_customer_id": e.stripe_customer_id, "value": str(e.value)},
                    "identifier": str(e.row_id),
                    "timestamp": e.occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                }
                for e in events
            ]
        }
        for attempt in range(2):
            call = StripeCall(dt.datetime.now(dt.UTC), key, self.event_name)
            try:
                self._observed("v2_stream", [e.row_id for e in events], self.client.v2.billing.meter_event_stream.create,
                    params=body, options={"api_key": self._session(), "idempotency_key": key},
                )
                return {e.row_id: Result(Outcome.REPORTED, call=call) for e in events}
            except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError) as error:
                # The session ended early (or was never valid here): renew once, then judge.
                self._session_token = None
                if attempt:
                    return {e.row_id: _classify(error, call) for e in events}
            except stripe.InvalidRequestError as error:
                return self._refused_stream(events, error, call)
            except stripe.StripeError as error:
                return {e.row_id: _classify(error, call) for e in events}
        raise AssertionError("unreachable")

    def _refused_stream(self, events: list[MeterEvent], error: stripe.InvalidRequestError, call: StripeCall) -> dict[uuid.UUID, Result]:
        """Stripe refused a whole stream call (400): one event of it, or all. Counted and
        logged with Stripe's message; a lone event fails with it, a larger call is sent
        again in halves (each its own request and key) until the refused events are
        found, so no event is held up by another."""
        code = getattr(error, "code", None) or "invalid_request"
        metrics.stripe_stream_refusals.labels(code).inc()
        log.warning(
            "stripe refused a meter event stream call",
            extra={"code": code, "stripe_message": error.user_message or str(error), "param": getattr(error, "param", None),
                   "event_ids": [str(e.row_id) for e in events]},
        )
        if len(events) == 1:
            return {events[0].row_id: _classify(error, call)}
        half = len(events) // 2
        results = self._send_stream(events[:half])
        if any(r.outcome is Outcome.RETRY for r in results.values()):
            retry = next(r for r in results.values() if r.outcome is Outcome.RETRY)
            return results | {e.row_id: retry for e in events[half:]}
        return results | self._send_stream(events[half:])
