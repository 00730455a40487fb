"""Run the local Stripe server in a background thread (tests).

``serve_in_thread()`` starts one on a free port; the object it returns gives the URL
for ``stripe.StripeClient(..., base_addresses={"api": url, "meter_events": url})`` and
reaches the server's state directly (no HTTP) for resetting, faults and inspection.
"""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from local_stripe.app import create_app, state_of


class _QuietHandler(WSGIRequestHandler):
    """No access-log line per request: test output stays readable (errors still log)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ThreadedStripeServer:
    """A threaded werkzeug server for one app, running until ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.app = create_app()
        self.state = state_of(self.app)
        self._server = make_server(host, port, self.app, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-stripe", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Forget events, meters, sessions and idempotency keys; faults back to defaults."""
        self.state.reset()

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Change fault settings (see ``local_stripe.faults``); returns them all.

        ValueError for an unknown setting or a bad value, and nothing changes.
        """
        return self.state.faults.update(settings)

    def faults(self) -> dict[str, Any]:
        return self.state.faults.snapshot()

    def meter_events(self) -> list[dict[str, Any]]:
        """Every accepted meter event, oldest first, as ``GET /_local/meter_events`` lists them."""
        return [event.listing() for event in self.state.store.events()]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ThreadedStripeServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_thread(host: str = "127.0.0.1", port: int = 0) -> ThreadedStripeServer:
    return ThreadedStripeServer(host, port)
