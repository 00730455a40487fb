"""Run the local Stripe server in a background thread (tests)."""

from __future__ import annotations

import threading

from werkzeug.serving import make_server

from local_stripe.app import create_app


class ThreadedStripeServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.app = create_app()
        self._server = make_server(host, port, self.app, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        pass

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


def serve_in_thread(host: str = "127.0.0.1", port: int = 0) -> ThreadedStripeServer:
    return ThreadedStripeServer(host, port)
