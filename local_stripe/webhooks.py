"""The event destination: v2 events POSTed as thin events to a URL, signed like Stripe's.

The body is the event's thin form (no ``data``: the receiver fetches the event, as
``EventNotification.fetch_event()`` does). The ``Stripe-Signature`` header is
``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``, made afresh for every attempt,
which is what ``stripe.WebhookSignature.verify_header`` (and so
``StripeClient.parse_event_notification``) checks.

An attempt fails without a 2xx answer within 5 s; it is retried after 0.5, 1, 2 and 4 s,
then given up (Stripe retries for up to 3 days). One thread delivers in order of due
time, so a slow destination delays later deliveries but never a request.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from local_stripe.background import BackgroundThread

log = logging.getLogger("local_stripe.webhooks")

THIN_FIELDS = ("id", "object", "type", "created", "livemode", "context", "reason", "related_object")
RETRY_DELAYS_SECONDS = (0.5, 1, 2, 4)
TIMEOUT_SECONDS = 5


def thin(event: dict[str, Any]) -> dict[str, Any]:
    """The thin event an event destination receives for a v2 event."""
    return {field: event.get(field) for field in THIN_FIELDS}


def signature_header(body: str, secret: str, timestamp: int) -> str:
    signed = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signed}"


class Delivery(BackgroundThread):
    """The delivery thread and its schedule: (due, sequence, attempt, url, secret, body)."""

    def __init__(self) -> None:
        super().__init__("local-stripe-webhooks")
        self._due: list[tuple[float, int, int, str, str, str]] = []
        self._sequence = itertools.count()
        self._generation = 0

    def send(self, event: dict[str, Any], url: str, secret: str) -> None:
        """Deliver ``event`` (thin) to ``url``, signed with ``secret``, from the thread."""
        body = json.dumps(thin(event))
        self._schedule(time.time(), 0, url, secret, body)

    def reset(self) -> None:
        """Forget deliveries not yet made (an attempt under way finishes, without retries)."""
        with self._wake:
            self._generation += 1
            self._due.clear()

    def _schedule(self, due: float, attempt: int, url: str, secret: str, body: str) -> None:
        with self._wake:
            heapq.heappush(self._due, (due, next(self._sequence), attempt, url, secret, body))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._due or self._due[0][0] > time.time()):
                    self._wake.wait(self._due[0][0] - time.time() if self._due else None)
                if self._stopping:
                    return
                _, _, attempt, url, secret, body = heapq.heappop(self._due)
                generation = self._generation
            if self._post(url, secret, body, attempt) or attempt >= len(RETRY_DELAYS_SECONDS):
                continue
            with self._wake:  # a reentrant lock: _schedule takes it again
                if generation == self._generation:
                    self._schedule(time.time() + RETRY_DELAYS_SECONDS[attempt], attempt + 1, url, secret, body)

    def _post(self, url: str, secret: str, body: str, attempt: int) -> bool:
        request = urllib.request.Request(
            url,
            data=body.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": signature_header(body, secret, int(time.time())),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) local_stripe",
            },
        )
        event_id = json.loads(body)["id"]
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
                status = answer.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError as error:  # refused, reset, timed out
            log.warning("webhook %s to %s: attempt %d failed: %s", event_id, url, attempt + 1, error)
            return False
        if 200 <= status < 300:
            log.info("webhook %s to %s: delivered (attempt %d)", event_id, url, attempt + 1)
            return True
        log.warning("webhook %s to %s: attempt %d answered %d", event_id, url, attempt + 1, status)
        return False
