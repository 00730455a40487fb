"""Run the local Stripe server in a background thread (tests).

``serve_in_thread()`` starts one on a free port; the object it returns gives the URL
for ``stripe.StripeClient(..., base_addresses={"api": url, "meter_events": url})`` and
reaches the server's state directly (no HTTP) for set-up, faults and inspection.
``receive_webhooks()`` starts an event destination that records what it is sent.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from typing import Any, Self

from werkzeug.serving import WSGIRequestHandler, make_server

from local_stripe.app import create_app, state_of
from local_stripe.state import new_customer, new_meter


class _QuietHandler(WSGIRequestHandler):
    """No access-log line per request: test output stays readable (errors still log)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _ThreadedServer:
    """A threaded werkzeug server for one WSGI app, running until ``stop()``."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, name: str):
        self._server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ThreadedStripeServer(_ThreadedServer):
    """The server; ``settings`` are its defaults for ``local_stripe.faults``' settings."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any):
        self.app = create_app(**settings)
        self.state = state_of(self.app)
        super().__init__(self.app, host, port, "local-stripe")

    def reset(self) -> None:
        """Forget everything stored and every delivery not yet made; settings to defaults."""
        self.state.reset()

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Change settings (see ``local_stripe.faults``); returns them all.

        ValueError for an unknown setting or a bad value, and nothing changes.
        """
        return self.state.update_settings(settings)

    def faults(self) -> dict[str, Any]:
        return self.state.faults.snapshot()

    def now(self) -> float:
        """The server's now (Unix seconds): real time plus the clock's offset."""
        return self.state.clock.now()

    def advance_clock(self, seconds: float) -> float:
        """Move the server's clock forward, doing at once what became due (judging events,
        emitting error reports), as ``POST /_local/clock`` does; the new now."""
        return self.state.advance_clock(seconds)

    def set_validation_delay(self, seconds: float) -> None:
        """How long after receipt v2 stream events are judged; 0: before the call answers."""
        self.set_faults(validation_delay_seconds=seconds)

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Send v2 events to ``url`` (None: nowhere), signed with ``secret`` if given."""
        self.set_faults(webhook_url=url, **({"webhook_secret": secret} if secret else {}))

    def create_meter(self, event_name: str, display_name: str | None = None) -> dict[str, Any]:
        """An active meter as the billing service configures it: sum of ``value`` per
        ``stripe_customer_id``."""
        return self.state.store.add_meter(new_meter(event_name, display_name=display_name, now=self.now()))

    def create_customers(self, *customer_ids: str) -> list[dict[str, Any]]:
        """Customers with these ids (those already there are kept as they are)."""
        store = self.state.store
        for customer_id in customer_ids:
            if not store.customer_exists(customer_id):
                store.add_customer(new_customer(customer_id, now=self.now()))
        return [store.customer(customer_id) for customer_id in customer_ids]

    def validate_now(self) -> None:
        """Judge every pending v2 stream event now, as ``POST /_local/validate`` does."""
        self.state.validator.validate()

    def meter_events(self, status: str = "valid") -> list[dict[str, Any]]:
        """Meter events with ``status`` (valid, pending, invalid), oldest first, as
        ``GET /_local/meter_events`` lists them."""
        return self.state.store.meter_events(status)

    def core_events(self) -> list[dict[str, Any]]:
        """The v2 events emitted (full, with ``data``), newest first."""
        return self.state.store.core_events()

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        """The Stripe API calls answered since the last reset (``path``: only those to it),
        oldest first: ``method``, ``path``, ``status``, ``at`` (epoch seconds)."""
        return self.state.store.calls(path)

    def stop(self) -> None:
        super().stop()
        self.state.stop()


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, **settings: Any) -> ThreadedStripeServer:
    return ThreadedStripeServer(host, port, **settings)


@dataclasses.dataclass(frozen=True)
class Webhook:
    """One delivery as received: the raw body and the ``Stripe-Signature`` header."""

    body: str
    signature: str | None


class WebhookReceiver(_ThreadedServer):
    """An event destination: records every POST; answers 500 to the first ``fail_first``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fail_first: int = 0):
        self.received: list[Webhook] = []
        self._fail_first = fail_first
        self._arrived = threading.Condition()
        super().__init__(self._app, host, port, "webhook-receiver")

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length).decode()
        with self._arrived:
            self.received.append(Webhook(body, environ.get("HTTP_STRIPE_SIGNATURE")))
            failing = len(self.received) <= self._fail_first
            self._arrived.notify_all()
        start_response("500 Internal Server Error" if failing else "200 OK", [("Content-Type", "text/plain")])
        return [b"failing on purpose" if failing else b"ok"]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Webhook]:
        """The deliveries, once there are at least ``count`` (AssertionError after ``timeout``)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} webhook deliveries within {timeout} s, expected {count}")
            return list(self.received)


def receive_webhooks(host: str = "127.0.0.1", port: int = 0, fail_first: int = 0) -> WebhookReceiver:
    return WebhookReceiver(host, port, fail_first)
