"""The client against the real service while it is faulted: 1,000 events sent through
the library to a real gunicorn web process, billed by a real Celery worker, through a
Redis of the test's own and PostgreSQL, while the test

* kills Redis (SIGKILL) and starts it again at once,
* stops the web process (SIGTERM) and starts it again,
* shuts Redis down and keeps it down until a caller was answered 503, then starts it,
* kills the web process (SIGKILL to its group) and starts it again,

each fault when a given number of events has been accepted, the web always on the same
port (as behind a load balancer). At the end every event is billed exactly once: one
row per event, no other row, each id the library returned has its row, and each row
reached Stripe once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import uuid

import pytest
import sqlalchemy as sa

from agent700_billing import Accepted, BatchItemResult, Client, RetryPolicy, UsageEvent
from devtools.children import wait_until
from shared import db, embedded, models
from tests.support.billing import MODEL, SERVICE, build_world
from tests.support.service_processes import GunicornProcess, PrivateRedis

pytestmark = pytest.mark.slow

EVENTS = 1000
SINGLE_CALLERS = 2  # threads calling record_usage, one event per call
SINGLE_EVENTS = 600  # the rest go through record_usage_batch, BATCH_SIZE at a time
BATCH_SIZE = 25
SETTLE_SECONDS = 120


class DurableRedis(PrivateRedis):
    """``PrivateRedis`` with the append-only file on (fsync always), as billing runs its
    Redis: a restart, even after SIGKILL, keeps every event and key it acknowledged."""

    def start(self) -> DurableRedis:
        embedded.start_redis(self.directory, self.port, appendonly=True)
        return self

    def kill_9(self) -> None:
        os.kill(self._pid(), signal.SIGKILL)
        wait_until(self._closed, 30, interval=0.02, message=f"redis still listens on {self.port}")

    def _closed(self) -> bool:
        try:
            embedded.wait_for_port(self.port, timeout=0)
        except RuntimeError:
            return True
        return False


class SamePortWeb(GunicornProcess):
    """The web process on one port across restarts: ``PORT`` in ``extra_env`` outranks
    the free port ``GunicornProcess.start`` picks, and ``url`` names the fixed one."""

    def __init__(self, *args, port: int, **kwargs):
        super().__init__(*args, extra_env={"PORT": str(port)}, **kwargs)
        self.fixed_port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.fixed_port}"

    def kill_9(self) -> None:
        """SIGKILL to the master and its workers at once: requests in flight are cut."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def durable_redis(tmp_path):
    redis_server = DurableRedis(tmp_path / "redis").start()
    yield redis_server
    redis_server.kill()


class Callers:
    """Threads sending the events through one ``Client``: event ``n`` has
    ``input_tokens=n``, so each row names the event it bills."""

    def __init__(self, client: Client, user_id: uuid.UUID, organization_id: uuid.UUID):
        self.client = client
        self.user_id = user_id
        self.organization_id = organization_id
        self.results: dict[int, Accepted | BatchItemResult] = {}
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []

    def event(self, number: int) -> UsageEvent:
        return UsageEvent(
            user_id=self.user_id, organization_id=self.organization_id, model_name=MODEL,
            input_tokens=number, output_tokens=1000, service_name=SERVICE,
        )

    def start(self) -> None:
        per_caller = SINGLE_EVENTS // SINGLE_CALLERS
        for caller in range(SINGLE_CALLERS):
            numbers = range(caller * per_caller, (caller + 1) * per_caller)
            self.threads.append(threading.Thread(target=self._one_by_one, args=(numbers,)))
        self.threads.append(threading.Thread(target=self._in_batches, args=(range(SINGLE_EVENTS, EVENTS),)))
        for thread in self.threads:
            thread.start()

    def _one_by_one(self, numbers: range) -> None:
        try:
            for number in numbers:
                self.results[number] = self.client.record(self.event(number))
        except Exception as failure:  # noqa: BLE001 - reported by the test
            self.failures.append(f"record_usage: {failure!r}")

    def _in_batches(self, numbers: range) -> None:
        try:
            for start in range(numbers.start, numbers.stop, BATCH_SIZE):
                chunk = range(start, min(start + BATCH_SIZE, numbers.stop))
                for number, result in zip(chunk, self.client.record_usage_batch([self.event(n) for n in chunk]), strict=True):
                    self.results[number] = result
        except Exception as failure:  # noqa: BLE001
            self.failures.append(f"record_usage_batch: {failure!r}")

    def accepted(self) -> int:
        if self.failures:
            raise AssertionError(f"a caller failed: {self.failures}")
        return len(self.results)

    def wait_for(self, count: int) -> None:
        wait_until(lambda: self.accepted() >= count, 90, interval=0.01, message=lambda: f"{len(self.results)} accepted")

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=SETTLE_SECONDS)
            assert not thread.is_alive(), "a caller is still sending"


def supervise(worker, exits: list[int | None]) -> None:
    """Start the worker again if it exited, as its process manager would in production.

    Celery 5.7 / kombu 5.7 sometimes end the worker on a lost Redis connection
    ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'" while restoring unacknowledged messages): a crash of the worker, not a
    loss, since the intake stream keeps every entry until it is recorded.
    """
    if not worker.alive():
        exits.append(worker.process.returncode)
        worker.start()


def rows(database_url: str) -> list[tuple[uuid.UUID, str | None, int, str]]:
    logs = models.UserBillableRequestLog
    with db.transaction(database_url) as session:
        return list(session.execute(sa.select(logs.id, logs.idempotency_key, logs.input_tokens, logs.status)).all())


def test_1000_events_through_the_client_are_billed_exactly_once_across_restarts(
    settings, factory, stripe, start_worker, durable_redis, retry_log, tmp_path
):
    settings = settings.replace(broker_url=durable_redis.url)
    world = build_world(factory, customer_ids=["cus_client_faults"])
    web = SamePortWeb(settings, stripe.url, tmp_path / "web", port=embedded.free_port(), workers=2).start()
    worker = start_worker(settings)
    client = Client(web.url, world.app_password, timeout=5, deadline=60, retry=RetryPolicy(max_backoff=1.0))
    callers = Callers(client, world.user.id, world.organization.id)
    try:
        callers.start()

        callers.wait_for(100)
        durable_redis.kill_9()
        durable_redis.start()

        callers.wait_for(300)
        assert web.terminate() == 0, web.log_tail()
        web.start()

        callers.wait_for(500)
        seen = len(retry_log.reasons)
        durable_redis.shut_down()
        wait_until(lambda: "HTTP 503" in retry_log.reasons[seen:], 30, interval=0.02, message=lambda: str(retry_log.reasons[seen:]))
        durable_redis.start()

        callers.wait_for(700)
        web.kill_9()
        web.start()

        callers.join()
    finally:
        client.close()
        web.stop()
    assert not callers.failures, callers.failures
    retries = collections.Counter(retry_log.reasons)

    # Every event accepted, each with an id of its own.
    assert sorted(callers.results) == list(range(EVENTS))
    assert all(isinstance(r, Accepted) or r.accepted for r in callers.results.values())
    ids = {number: result.id for number, result in callers.results.items()}
    assert len(set(ids.values())) == EVENTS

    # Billed exactly once: one row per event, nothing else, each reported to Stripe once.
    worker_exits: list[int | None] = []

    def settled():
        supervise(worker, worker_exits)
        recorded = rows(settings.database_url)
        return len(recorded) >= EVENTS and all(status == "reported" for *_, status in recorded)

    wait_until(
        settled, SETTLE_SECONDS, interval=0.25,
        message=lambda: f"{len(rows(settings.database_url))} rows; retries {retries}; worker exits {worker_exits}\n{worker.log_tail()}",
    )
    recorded = rows(settings.database_url)
    assert len(recorded) == EVENTS
    assert sorted(input_tokens for _, _, input_tokens, _ in recorded) == list(range(EVENTS)), "an event billed twice or not at all"
    by_number = {input_tokens: (row_id, key) for row_id, key, input_tokens, _ in recorded}
    for number, result in callers.results.items():
        assert by_number[number] == (result.id, result.idempotency_key), number
    identifiers = [event["identifier"] for event in stripe.meter_events()]
    assert sorted(identifiers) == sorted(str(i) for i in ids.values())
    # The faults were felt by the callers (a 503 was waited for above).
    assert retries["HTTP 503"] >= 1, retries
