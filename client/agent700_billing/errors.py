"""Errors that say what the service said, and what the caller can still do about it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from agent700_billing.models import BatchItemResult, ErrorDetail, UsageEvent


class BillingError(Exception):
    """Anything this library raises."""


class ApiError(BillingError):
    """The service answered with an error status; ``error`` is its sentence.

    ``outcome_unknown`` is true for the service's "outcome unknown" 503: the event with
    ``event_id`` may or may not have been accepted. A retry with the same Idempotency-Key
    bills it once either way.
    """

    def __init__(
        self,
        status: int,
        error: str,
        *,
        details: Sequence[ErrorDetail] = (),
        body: Any = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.error = error
        self.details = tuple(details)
        self.body = body
        self.retry_after = retry_after
        text = f"HTTP {status}: {error}"
        if self.details:
            text += " (" + "; ".join(f"{d.field}: {d.message}" for d in self.details) + ")"
        super().__init__(text)

    @property
    def outcome_unknown(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("status") == "unknown"

    @property
    def event_id(self) -> uuid.UUID | None:
        """The attempted event's id, in an "outcome unknown" answer."""
        if isinstance(self.body, dict) and isinstance(self.body.get("id"), str):
            try:
                return uuid.UUID(self.body["id"])
            except ValueError:
                return None
        return None


class NotFound(ApiError):
    """404: for ``get_usage``, no event with that id was ever accepted."""


class DeadlineExceeded(BillingError):
    """Retries went on until the deadline and none succeeded.

    ``possibly_accepted`` is true when some attempt may have reached the service (a
    timeout, a dropped connection, an "outcome unknown" 503): send again with
    ``idempotency_key`` to make sure it is billed, and billed once. ``attempted_ids``
    are the event ids the service named in "outcome unknown" answers; ``get_usage`` on
    one says whether it was accepted (200) or not (404).
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        last_error: BaseException | None,
        idempotency_key: str | None = None,
        possibly_accepted: bool = False,
        attempted_ids: Sequence[uuid.UUID] = (),
    ):
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error
        self.idempotency_key = idempotency_key
        self.possibly_accepted = possibly_accepted
        self.attempted_ids = tuple(attempted_ids)


class BatchIncomplete(BillingError):
    """A batch stopped before every event was accepted or rejected.

    ``results`` are the events settled so far (accepted or rejected), at their indexes
    in the caller's list; ``unfinished`` are the others, each with the Idempotency-Key
    it was sent with, at ``unfinished_indexes``. Passing ``unfinished`` to
    ``record_usage_batch`` again bills each of them exactly once. ``__cause__`` is
    what stopped it (a ``DeadlineExceeded`` or an ``ApiError``).
    """

    def __init__(
        self,
        message: str,
        *,
        results: Sequence[BatchItemResult],
        unfinished: Sequence[UsageEvent],
        unfinished_indexes: Sequence[int],
    ):
        super().__init__(message)
        self.results = list(results)
        self.unfinished = list(unfinished)
        self.unfinished_indexes = list(unfinished_indexes)
