"""The client: record usage (one event or a batch), read an event's status.

Every event gets an Idempotency-Key once, before its first attempt, and keeps it on
every retry, so the service bills it once however often it is sent. A batch re-sends
only the events the service did not settle (accept or reject); an accepted event is
never sent again, a rejected one is reported, not retried.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import httpx

from agent700_billing import __version__
from agent700_billing.errors import ApiError, BatchIncomplete, DeadlineExceeded, NotFound
from agent700_billing.models import (
    Accepted,
    BatchItemResult,
    UsageEvent,
    UsageRecord,
    error_details,
    new_idempotency_key,
)
from agent700_billing.retry import (
    RETRYABLE_STATUSES,
    Attempts,
    RetryPolicy,
    retry_after_seconds,
    transport_error_is_retryable,
)

USAGE_PATH = "api/billing/external-usage"
BATCH_PATH = f"{USAGE_PATH}/batch"
# The service's limits: 100 events per batch, 64 KiB per body (kept under, with room).
MAX_BATCH_EVENTS = 100
MAX_BATCH_BODY_BYTES = 60_000
_JSON = {"Content-Type": "application/json"}


class Client:
    """A caller of the billing API. Thread-safe; use it as a context manager or ``close()`` it.

    ``timeout`` bounds one HTTP attempt, ``deadline`` one method call with all its
    retries (seconds).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        deadline: float = 30.0,
        retry: RetryPolicy | None = None,
    ):
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        self.timeout = timeout
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"agent700-billing-client/{__version__}",
            },
            timeout=timeout,
            follow_redirects=False,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- one event ------------------------------------------------------------------------

    def record_usage(
        self,
        *,
        user_id: uuid.UUID | str,
        organization_id: uuid.UUID | str,
        model_name: str,
        input_tokens: int,
        output_tokens: int,
        service_name: str,
        source: str | None = None,
        occurred_at: dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Bill one usage event; returns once the service accepted it.

        Raises ``ApiError`` for a refusal (401, 403, 409, 422, ...: not retried) and
        ``DeadlineExceeded`` when no attempt succeeded in time (its ``idempotency_key``
        is the one to send again with).
        """
        event = UsageEvent(
            user_id=user_id, organization_id=organization_id, model_name=model_name, input_tokens=input_tokens,
            output_tokens=output_tokens, service_name=service_name, source=source, occurred_at=occurred_at,
            idempotency_key=idempotency_key,
        )
        return self.record(event)

    def record(self, event: UsageEvent) -> Accepted:
        """``record_usage`` for a ``UsageEvent``."""
        key = event.idempotency_key or new_idempotency_key()
        content = _encode(event.body())
        attempts = Attempts("record_usage", self.deadline, self.retry, self._rng, idempotency_key=key)
        while True:
            answer = self._send_once(attempts, "POST", USAGE_PATH, content=content, headers={**_JSON, "Idempotency-Key": key})
            failure: ApiError | httpx.TransportError
            if isinstance(answer, httpx.TransportError):
                failure = answer
            elif answer.status_code in (200, 202):
                body = _json(answer)
                try:
                    return Accepted(
                        id=uuid.UUID(body["id"]), status=body["status"], replayed=answer.status_code == 200,
                        idempotency_key=key,
                    )
                except (KeyError, TypeError, ValueError):
                    failure = _unreadable(answer)  # accepted, but which id? The same key again answers with it
            else:
                failure = _retryable_error(answer)
            attempts.retry_or_give_up(failure)

    # --- a batch --------------------------------------------------------------------------

    def record_usage_batch(self, events: Iterable[UsageEvent]) -> list[BatchItemResult]:
        """Bill many events (any number: sent 100 at a time); one result per event, in
        the order given.

        Events without an ``idempotency_key`` get one first. Retries re-send only the
        events not yet settled, each with its key. Raises ``BatchIncomplete`` (with what
        was settled and what was not) when a refusal of the whole request or the
        deadline stops it.
        """
        keyed = [
            event if event.idempotency_key else dataclasses.replace(event, idempotency_key=new_idempotency_key())
            for event in events
        ]
        settled: dict[int, BatchItemResult] = {}
        attempts = Attempts("record_usage_batch", self.deadline, self.retry, self._rng)
        try:
            for chunk in _chunks(keyed):
                self._settle_chunk(attempts, keyed, chunk, settled)
        except (ApiError, DeadlineExceeded) as failure:
            unfinished = [index for index in range(len(keyed)) if index not in settled]
            raise BatchIncomplete(
                f"record_usage_batch: {len(unfinished)} of {len(keyed)} events neither accepted nor rejected: {failure}",
                results=[settled[index] for index in sorted(settled)],
                unfinished=[keyed[index] for index in unfinished],
                unfinished_indexes=unfinished,
            ) from failure
        return [settled[index] for index in range(len(keyed))]

    def _settle_chunk(
        self, attempts: Attempts, keyed: Sequence[UsageEvent], chunk: list[int], settled: dict[int, BatchItemResult]
    ) -> None:
        pending = chunk
        while pending:
            content = _encode({"events": [{**keyed[i].body(), "idempotency_key": keyed[i].idempotency_key} for i in pending]})
            answer = self._send_once(attempts, "POST", BATCH_PATH, content=content, headers=_JSON)
            failure: ApiError | httpx.TransportError
            if isinstance(answer, httpx.TransportError):
                failure = answer
            elif answer.status_code == 200:
                body = _json(answer)
                _settle(body.get("results") if isinstance(body, dict) else None, pending, keyed, settled)
                pending = [i for i in pending if i not in settled]
                attempts.progressed()
                if not pending:
                    return
                failure = _unreadable(answer)  # not every event answered for: again, same keys
            else:
                failure = _retryable_error(answer)
                if failure.outcome_unknown and isinstance(failure.body, dict):
                    # Its rejected events are settled; the "unknown" ones go again, same keys.
                    _settle(failure.body.get("results"), pending, keyed, settled)
                    pending = [i for i in pending if i not in settled]
                    if not pending:
                        return
            attempts.retry_or_give_up(failure)

    # --- status ---------------------------------------------------------------------------

    def get_usage(self, event_id: uuid.UUID | str) -> UsageRecord:
        """The status record of an accepted event. ``NotFound`` means the service never
        accepted an event with this id (e.g. after an "outcome unknown" answer)."""
        path = f"{USAGE_PATH}/{uuid.UUID(str(event_id))}"
        attempts = Attempts("get_usage", self.deadline, self.retry, self._rng)
        while True:
            answer = self._send_once(attempts, "GET", path)
            failure: ApiError | httpx.TransportError
            if isinstance(answer, httpx.TransportError):
                failure = answer
            elif answer.status_code == 200:
                try:
                    return UsageRecord.from_json(_json(answer))
                except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
                    failure = _unreadable(answer)  # a torn answer: ask again
            else:
                failure = _retryable_error(answer)
            attempts.retry_or_give_up(failure)

    # --- one attempt ----------------------------------------------------------------------

    def _send_once(
        self, attempts: Attempts, method: str, path: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response | httpx.TransportError:
        """The response, or the network failure that a retry may cure."""
        try:
            return self._http.request(method, path, content=content, headers=headers, timeout=attempts.timeout(self.timeout))
        except httpx.TransportError as error:
            if not transport_error_is_retryable(error):
                raise
            return error


def _settle(
    results: Any, sent: list[int], keyed: Sequence[UsageEvent], settled: dict[int, BatchItemResult]
) -> None:
    """Record the accepted and rejected events of a batch answer; ``index`` in the
    answer is the position in the request (``sent``), mapped back to the caller's."""
    if not isinstance(results, list):
        return
    for result in results:
        if not isinstance(result, dict):
            continue
        position, status = result.get("index"), result.get("status")
        if not isinstance(position, int) or not 0 <= position < len(sent):
            continue
        index = sent[position]
        key = keyed[index].idempotency_key or ""
        if status in ("queued", "duplicate") and isinstance(result.get("id"), str):
            settled[index] = BatchItemResult(index=index, status=status, idempotency_key=key, id=uuid.UUID(result["id"]))
        elif status == "rejected":
            settled[index] = BatchItemResult(
                index=index, status="rejected", idempotency_key=key, error=result.get("error"), details=error_details(result)
            )


def _chunks(events: Sequence[UsageEvent]) -> Iterator[list[int]]:
    """Indexes of ``events`` in requests the service takes: at most 100 events, under 64 KiB."""
    chunk: list[int] = []
    size = 0
    for index, event in enumerate(events):
        event_size = len(_encode({**event.body(), "idempotency_key": event.idempotency_key})) + 1
        if chunk and (len(chunk) == MAX_BATCH_EVENTS or size + event_size > MAX_BATCH_BODY_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(index)
        size += event_size
    if chunk:
        yield chunk


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(response: httpx.Response) -> Any:
    """The body as JSON (numbers with a fraction as ``Decimal``), or ``None``."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        return None


def _api_error(response: httpx.Response) -> ApiError:
    body = _json(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        sentence = body["error"]
    else:
        sentence = response.text.strip()[:200] or response.reason_phrase or "No explanation given."
    error_class = NotFound if response.status_code == 404 else ApiError
    return error_class(
        response.status_code,
        sentence,
        details=error_details(body),
        body=body,
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )


def _retryable_error(response: httpx.Response) -> ApiError:
    """The error of a non-2xx answer worth retrying; any other is raised here."""
    error = _api_error(response)
    if error.status not in RETRYABLE_STATUSES:
        raise error
    return error


def _unreadable(response: httpx.Response) -> ApiError:
    return ApiError(response.status_code, f"The answer could not be read: {response.text[:200]!r}", body=_json(response))

