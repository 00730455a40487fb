"""``/healthz`` and ``/readyz`` against a Redis and a PostgreSQL of the test's own, which it
stops and starts again: ``/readyz`` is 503 naming the one that does not answer and 200
once both do, and every answer comes within a bounded time (a readiness probe that hangs
is as bad as none)."""

from __future__ import annotations

import pytest

from ingest_api import create_app
from tests.support.http_probes import get_within

pytestmark = pytest.mark.slow

# READINESS_TIMEOUT_SECONDS is 2; with the connection attempt, an answer must come well within this.
BOUND_SECONDS = 5


def readyz(client) -> tuple[int, dict, float]:
    """One ``GET /readyz``, bounded (``get_within``)."""
    response, elapsed = get_within(client, "/readyz", BOUND_SECONDS)
    return response.status_code, response.get_json(), elapsed


def assert_ready(client) -> None:
    status, body, _ = readyz(client)
    assert (status, body["status"]) == (200, "ready")
    # The single-URL layout: the primary is the URL's, no replicas required.
    assert (body["redis"]["replicas"], body["redis"]["replicas_required"]) == (0, 0), body


def assert_not_ready(client, failing: str) -> None:
    status, body, _ = readyz(client)
    assert status == 503, body
    assert body["failing"] == [failing], body
    assert failing in body["error"], body


def test_healthz_answers_whatever_the_servers_do(settings, private_redis):
    client = create_app(settings.replace(broker_url=private_redis.url)).test_client()
    assert client.get("/healthz").status_code == 200
    private_redis.shut_down()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_readyz_follows_redis_stopped_and_started_again(settings, private_redis):
    client = create_app(settings.replace(broker_url=private_redis.url)).test_client()
    assert_ready(client)

    private_redis.shut_down()
    assert_not_ready(client, "broker")
    assert_not_ready(client, "broker")  # and stays so, each answer as fast

    private_redis.start()  # the same port
    assert_ready(client)


def test_readyz_is_bounded_when_redis_hangs(settings, private_redis):
    client = create_app(settings.replace(broker_url=private_redis.url)).test_client()
    assert_ready(client)

    private_redis.pause()  # accepts connections, answers nothing
    try:
        assert_not_ready(client, "broker")
    finally:
        private_redis.resume()
    assert_ready(client)


def test_readyz_follows_postgresql_stopped_and_started_again(settings, private_postgres):
    client = create_app(settings.replace(database_url=private_postgres.admin_url)).test_client()
    assert_ready(client)
    assert_ready(client)  # a pooled connection now exists: it is the one that will be dead

    private_postgres.shut_down()
    assert_not_ready(client, "database")
    assert_not_ready(client, "database")

    private_postgres.start()
    assert_ready(client)  # the first answer after the restart, not an eventual one


def test_readyz_names_both_when_both_are_down(settings, private_redis, private_postgres):
    client = create_app(settings.replace(broker_url=private_redis.url, database_url=private_postgres.admin_url)).test_client()
    assert_ready(client)

    private_redis.shut_down()
    private_postgres.shut_down()
    status, body, _ = readyz(client)
    assert status == 503 and body["failing"] == ["database", "broker"], body

    private_postgres.start()
    assert_not_ready(client, "broker")
    private_redis.start()
    assert_ready(client)


def test_readyz_is_bounded_when_postgresql_hangs(settings, private_postgres):
    client = create_app(settings.replace(database_url=private_postgres.admin_url)).test_client()
    assert_ready(client)  # a pooled connection exists, to a backend that will freeze

    private_postgres.pause()  # the postmaster and every backend: connections open, nothing answers
    try:
        for _ in range(3):
            assert_not_ready(client, "database")
    finally:
        private_postgres.resume()
    assert_ready(client)
