"""Fault injection and tunables for the local Stripe server (not part of Stripe's API).

Settings (all optional in an update; ``GET``/``POST /_local/faults`` show and change them;
``/_local/reset`` puts back the values the server started with, see ``__main__``):

``fail_next`` (int) / ``status`` (429 or 5xx)
    The next ``fail_next`` Stripe API calls that pass authentication (and are not an
    idempotent replay) answer ``status`` with a Stripe error body, as if the endpoint
    failed. A 5xx counts as the endpoint failing: under a v1 idempotency key it is stored
    and replayed to every retry with that key (sent with ``Stripe-Should-Retry: false``,
    as Stripe does when a retry would only replay); a 429, a v2 call, or a call without a
    key is not stored (``Stripe-Should-Retry: true``), so a retry runs for real.
``store_injected_failures`` (bool, default true)
    false is the kind setting of old: an injected failure is never stored under the
    idempotency key, so a v1 retry with the same key runs for real (Stripe replays the
    stored 500).
``latency_ms`` (number)
    Added to every Stripe API call. v1 meter-event calls sleep while holding their
    (customer, event_name) claims, so overlapping calls are observable.
``one_call_per_customer`` (bool, default true)
    Stripe's rule for v1 meter events: at most one concurrent call per customer per
    meter; the second concurrent call answers 429 ``rate_limit``. Not applied to the v2
    stream.
``session_ttl_seconds`` (number)
    Lifetime of v2 meter event sessions created from now on (Stripe: 15 minutes). 0 makes
    new sessions expire at once.
``validation_delay_seconds`` (number, default 1)
    How long after its receipt a v2 stream event is validated (``validator.py``). 0
    validates before the stream call answers (still ``{}``, still reported by event), so
    tests see the outcome at once.
``summary_lag_seconds`` (number, default 2)
    Summaries are eventually consistent: a valid event counts in its meter's summaries
    only once the clock is at least its receipt plus this; a canceled one leaves them
    this long after its cancellation. 0 counts at once.
``report_window_seconds`` (number > 0, default 60)
    Invalid v2 events are reported per meter (and ``no_meter_found``) per window of this
    many seconds, aligned on multiples of it, of their receipt; a window's report is
    emitted once the window has ended and all its events are judged.
``sample_request_identifier`` ("idempotency_key" (default) | "event_identifier")
    What an error report's ``sample_errors[].request.identifier`` holds: the
    Idempotency-Key of the stream call that brought the event (the SDK documents the
    field as "the request idempotency key") or the event's own identifier. Stripe's
    wire format here is not certain, hence the choice.
``webhook_url`` (http(s) URL or null, default null) / ``webhook_secret`` (``whsec_...``)
    The event destination: where v2 events are POSTed as thin events, and the secret
    they are signed with (``webhooks.py``). Without a URL events are only listed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from local_stripe.wire import StripeError

DEFAULT_SESSION_TTL_SECONDS = 15 * 60
DEFAULT_VALIDATION_DELAY_SECONDS = 1.0
DEFAULT_WEBHOOK_SECRET = "whsec_local_stripe"
DEFAULT_SUMMARY_LAG_SECONDS = 2.0
DEFAULT_REPORT_WINDOW_SECONDS = 60.0
SAMPLE_REQUEST_IDENTIFIERS = ("idempotency_key", "event_identifier")


@dataclasses.dataclass(frozen=True)
class FaultSettings:
    fail_next: int = 0
    status: int = 500
    latency_ms: float = 0
    store_injected_failures: bool = True
    one_call_per_customer: bool = True
    session_ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS
    validation_delay_seconds: float = DEFAULT_VALIDATION_DELAY_SECONDS
    summary_lag_seconds: float = DEFAULT_SUMMARY_LAG_SECONDS
    report_window_seconds: float = DEFAULT_REPORT_WINDOW_SECONDS
    sample_request_identifier: str = "idempotency_key"
    webhook_url: str | None = None
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET


def _check(name: str, value: Any) -> Any:
    """The value if it suits the setting, else ValueError with a readable reason."""
    if name in ("one_call_per_customer", "store_injected_failures"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if name == "webhook_url":
        if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
            raise ValueError("webhook_url must be an http(s) URL or null")
        return value
    if name == "sample_request_identifier":
        if value not in SAMPLE_REQUEST_IDENTIFIERS:
            raise ValueError(f"sample_request_identifier must be one of {', '.join(SAMPLE_REQUEST_IDENTIFIERS)}")
        return value
    if name == "webhook_secret":
        if not (isinstance(value, str) and value.startswith("whsec_") and len(value) > len("whsec_")):
            raise ValueError("webhook_secret must be a string starting with whsec_")
        return value
    # bool is an int in Python; a JSON true is never a count or a duration here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    if name == "report_window_seconds" and value <= 0:
        raise ValueError("report_window_seconds must be a number > 0")
    if name == "fail_next":
        if not isinstance(value, int):
            raise ValueError("fail_next must be an integer")
    elif name == "status":
        if value != 429 and not (isinstance(value, int) and 500 <= value <= 599):
            raise ValueError("status must be 429 or a 5xx code")
    return value


def _checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    known = {field.name for field in dataclasses.fields(FaultSettings)}
    for name in changes:
        if name not in known:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
    return {name: _check(name, value) for name, value in changes.items()}


class Faults:
    """The current settings, guarded by their own lock; ``take_failure`` consumes them.

    ``defaults`` (checked like an update) are what ``reset`` returns to, so a server started
    with a webhook URL or another validation delay keeps them across test resets.
    """

    def __init__(self, **defaults: Any) -> None:
        self._lock = threading.Lock()
        self._defaults = dataclasses.replace(FaultSettings(), **_checked(defaults))
        self._settings = self._defaults

    def reset(self) -> None:
        with self._lock:
            self._settings = self._defaults

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply some settings at once (all or none); ValueError names the first bad one."""
        checked = _checked(changes)
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **checked)
            return dataclasses.asdict(self._settings)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self._settings)

    @property
    def current(self) -> FaultSettings:
        """All settings at once (an immutable copy)."""
        with self._lock:
            return self._settings

    @property
    def latency_seconds(self) -> float:
        return self.current.latency_ms / 1000

    def take_failure(self) -> StripeError | None:
        """The injected error for this call, if one is still due."""
        with self._lock:
            if self._settings.fail_next <= 0:
                return None
            self._settings = dataclasses.replace(self._settings, fail_next=self._settings.fail_next - 1)
            status = self._settings.status
        # Stripe sends Stripe-Should-Retry: true when a retry is safe and may succeed
        # (lock timeouts, shed load); without it the SDK would not retry a 429.
        headers = {"Stripe-Should-Retry": "true"}
        if status == 429:
            return StripeError(
                429,
                "Request rate limit exceeded. You can learn more about rate limits here "
                "https://stripe.com/docs/rate-limits. (injected by local_stripe)",
                code="rate_limit",
                headers=headers,
            )
        return StripeError(
            status,
            "An unknown error occurred. (injected by local_stripe)",
            type="api_error",
            headers=headers,
        )
