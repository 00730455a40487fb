"""The client's tests: a stand-in of the API on a real local HTTP server (``service``),
and clients of it with short waits between retries (``connect``)."""

from __future__ import annotations

import pytest

from agent700_billing import Client, RetryPolicy
from tests.client.stand_in import TOKEN, StandInService

# Short waits, so that a test of several retries takes milliseconds, not seconds.
QUICK_RETRIES = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def service():
    stand_in = StandInService().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def connect(service):
    """``connect(**options)``: a ``Client`` of the stand-in, closed at teardown."""
    clients: list[Client] = []

    def make(base_url: str | None = None, token: str = TOKEN, **options) -> Client:
        options.setdefault("retry", QUICK_RETRIES)
        options.setdefault("timeout", 5.0)
        options.setdefault("deadline", 10.0)
        clients.append(Client(base_url or service.url, token, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
