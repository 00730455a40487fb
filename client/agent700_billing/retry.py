"""When to try again, and how long to wait first.

Only answers that mean "not now" are retried: 502/503/504, a connection that could not
be made or broke, a timeout. The waits grow exponentially with jitter (so callers that
failed together do not come back together), a ``Retry-After`` from the service is
honoured (never earlier, a little jitter later), and nothing starts after the call's
deadline: when the next wait would end past it, the call gives up at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import time
import uuid
from dataclasses import dataclass

import httpx

from agent700_billing.errors import ApiError, DeadlineExceeded

logger = logging.getLogger("agent700_billing")

# 429: the service did not check the credential (wrong ones from elsewhere were over its
# bound); the same request may pass after Retry-After.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Waits between attempts: ``initial_backoff`` doubling (``multiplier``) up to
    ``max_backoff``, each drawn from the upper half of that range; after a
    ``Retry-After`` of N seconds, between N and N × (1 + ``retry_after_jitter``)."""

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_after_jitter: float = 0.2

    def wait_seconds(self, failed_attempts: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return retry_after * (1 + rng.uniform(0, self.retry_after_jitter))
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, failed_attempts - 1))
        return rng.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def transport_error_is_retryable(error: httpx.TransportError) -> bool:
    """Network trouble is; a malformed URL or a client-side protocol misuse is not."""
    return isinstance(error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def request_may_have_arrived(error: httpx.TransportError) -> bool:
    """Whether the service may have acted on a request that failed this way: only a
    connection never made (or a pool slot never had) proves it did not."""
    return not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


class Attempts:
    """The attempts of one call: its deadline, how many were made, whether any of them
    may have been accepted, and the wait before the next one."""

    def __init__(
        self, what: str, deadline_seconds: float, policy: RetryPolicy, rng: random.Random, idempotency_key: str | None = None
    ):
        self.what = what
        self.deadline_seconds = deadline_seconds
        self.deadline_at = time.monotonic() + deadline_seconds
        self.policy = policy
        self.rng = rng
        self.idempotency_key = idempotency_key
        self.count = 0
        self.failures_in_a_row = 0
        self.possibly_accepted = False
        self.attempted_ids: list[uuid.UUID] = []

    def timeout(self, per_attempt: float) -> float:
        """This attempt's timeout: the per-attempt one, cut to what is left of the deadline."""
        self.count += 1
        return max(0.001, min(per_attempt, self.deadline_at - time.monotonic()))

    def progressed(self) -> None:
        """Something was settled (a batch's chunk): the next failure waits the least again."""
        self.failures_in_a_row = 0

    def retry_or_give_up(self, failure: ApiError | httpx.TransportError) -> None:
        """Sleep until the next attempt may start, or raise ``DeadlineExceeded`` when it
        could not start before the deadline."""
        self.failures_in_a_row += 1
        if isinstance(failure, ApiError):
            reason = f"HTTP {failure.status}" + (" outcome unknown" if failure.outcome_unknown else "")
            retry_after = failure.retry_after
            # A gateway's 502/504 may come after the service took the request; the
            # service's own plain 503 means nothing was accepted (its contract).
            if failure.outcome_unknown or failure.status != 503:
                self.possibly_accepted = True
            if failure.event_id is not None:
                self.attempted_ids.append(failure.event_id)
        else:
            reason, retry_after = type(failure).__name__, None
            self.possibly_accepted |= request_may_have_arrived(failure)
        wait = self.policy.wait_seconds(self.failures_in_a_row, retry_after, self.rng)
        if time.monotonic() + wait >= self.deadline_at:
            raise DeadlineExceeded(
                f"{self.what}: gave up after {self.count} attempt(s) within its {self.deadline_seconds:g} s deadline; "
                f"last: {reason}: {failure}"
                + (f"; it may have been accepted: send it again with Idempotency-Key {self.idempotency_key!r}"
                   if self.possibly_accepted and self.idempotency_key else ""),
                attempts=self.count,
                last_error=failure,
                idempotency_key=self.idempotency_key,
                possibly_accepted=self.possibly_accepted,
                attempted_ids=self.attempted_ids,
            ) from failure
        logger.info(
            "%s: attempt %d failed (%s), retrying in %.2f s",
            self.what, self.count, reason, wait,
            extra={"retry_reason": reason, "retry_attempt": self.count, "retry_wait": wait},
        )
        time.sleep(wait)
