"""Losing the Redis primary under load (``shared.redis_connection``): the production
layout of a primary, two replicas and three Sentinels on 127.0.0.1 ports, a real
gunicorn web and a real Celery worker connected through the Sentinels, the web
requiring one replica's acknowledgement before each 2xx (``REDIS_ACK_REPLICAS=1``).

The primary is killed with SIGKILL while callers send events through the client library
(keyed retries). Sentinel promotes a replica; neither the web nor the worker is
restarted. Every 2xx ends as exactly one row and one Stripe meter event; every 503 the
callers saw ("unknown" or "unavailable") was settled by the library's retry with the
same Idempotency-Key; recording and reporting resume within 30 s of the promotion.

Two replicas, not one: after the promotion the new primary still has one, so the
acknowledged 2xx goes on; with a single replica every answer would be 503 "unknown"
until the lost host is replaced (which is what REDIS_ACK_REPLICAS promises).
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from agent700_billing import Client, RetryPolicy, UsageEvent
from devtools.children import wait_until
from shared import db, models
from tests.support.billing import MODEL, SERVICE, build_world
from tests.support.sentinel_cluster import SentinelCluster
from tests.support.service_processes import GunicornProcess

pytestmark = pytest.mark.slow

RATE = 500  # events per second, all callers together
CALLERS = 4
BATCH = 5  # events per call: 100 calls a second at the full rate
EVENTS = 6000
KILL_AT = 2000  # events answered before the primary is killed
RESUME_SECONDS = 30
SETTLE_SECONDS = 180


@pytest.fixture
def cluster(tmp_path):
    cluster = SentinelCluster(tmp_path / "redis", replicas=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class PacedCallers:
    """``CALLERS`` threads sending ``BATCH`` events per call, together at ``RATE``; event
    ``n`` has ``input_tokens=n``, so each row names the event it bills."""

    def __init__(self, client: Client, user_id: uuid.UUID, organization_id: uuid.UUID):
        self.client, self.user_id, self.organization_id = client, user_id, organization_id
        self.results: dict[int, object] = {}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._send, args=(caller,)) for caller in range(CALLERS)]
        self.started = self.ended = 0.0

    def event(self, number: int) -> UsageEvent:
        return UsageEvent(user_id=self.user_id, organization_id=self.organization_id, model_name=MODEL,
                          input_tokens=number, output_tokens=1000, service_name=SERVICE)

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def _send(self, caller: int) -> None:
        interval = BATCH * CALLERS / RATE
        next_call = time.monotonic()
        try:
            for start in range(caller * BATCH, EVENTS, BATCH * CALLERS):
                chunk = range(start, min(start + BATCH, EVENTS))
                for number, result in zip(chunk, self.client.record_usage_batch([self.event(n) for n in chunk]), strict=True):
                    self.results[number] = result
                next_call += interval
                time.sleep(max(0.0, next_call - time.monotonic()))
        except Exception as failure:  # noqa: BLE001 - reported by the test
            self.failures.append(repr(failure))

    def answered(self) -> int:
        assert not self.failures, self.failures
        return len(self.results)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=SETTLE_SECONDS)
            assert not thread.is_alive(), "a caller is still sending"
        self.ended = time.monotonic()


def row_counts(database_url: str) -> tuple[int, int]:
    logs = models.UserBillableRequestLog
    with db.transaction(database_url) as session:
        recorded = session.scalar(sa.select(sa.func.count()).select_from(logs))
        reported = session.scalar(sa.select(sa.func.count()).select_from(logs).where(logs.status == "reported"))
    return recorded, reported


def rows(database_url: str) -> list[tuple[uuid.UUID, str | None, int, str]]:
    logs = models.UserBillableRequestLog
    with db.transaction(database_url) as session:
        return list(session.execute(sa.select(logs.id, logs.idempotency_key, logs.input_tokens, logs.status)).all())


def test_kill_9_of_the_primary_under_load_loses_nothing_and_bills_once(
    settings, factory, stripe, start_worker, cluster, retry_log, tmp_path
):
    settings = cluster.settings_for(settings, ack_replicas=1)
    env = cluster.env(ack_replicas=1)
    world = build_world(factory, customer_ids=["cus_failover"])
    web = GunicornProcess(settings, stripe.url, tmp_path / "web", workers=2, extra_env=env).start()
    worker = start_worker(settings, **env)
    client = Client(web.url, world.app_password, timeout=5, deadline=90, retry=RetryPolicy(max_backoff=1.0))
    callers = PacedCallers(client, world.user.id, world.organization.id)
    try:
        callers.start()
        wait_until(lambda: callers.answered() >= KILL_AT, 120, interval=0.01, message=lambda: f"{len(callers.results)} answered")
        old_primary = cluster.primary_port()
        cluster.kill_9(old_primary)
        killed_at = time.monotonic()
        wait_until(lambda: cluster.primary_port() != old_primary, 30, interval=0.05, message="no promotion")
        promoted_at = time.monotonic()
        recorded_then, reported_then = row_counts(settings.database_url)
        wait_until(lambda: row_counts(settings.database_url)[0] > recorded_then, RESUME_SECONDS, interval=0.1,
                   message=lambda: f"recording did not resume\n{worker.log_tail()}")
        recording_resumed = time.monotonic() - promoted_at
        wait_until(lambda: row_counts(settings.database_url)[1] > reported_then, RESUME_SECONDS, interval=0.1,
                   message=lambda: f"reporting did not resume\n{worker.log_tail()}")
        reporting_resumed = time.monotonic() - promoted_at
        callers.join()
    finally:
        client.close()
        web.stop()
    assert not callers.failures, callers.failures
    retries = collections.Counter(retry_log.reasons)

    # Every event answered 2xx in the end (after keyed retries), each with its own id.
    assert sorted(callers.results) == list(range(EVENTS))
    ids = {number: result.id for number, result in callers.results.items()}
    assert len(set(ids.values())) == EVENTS

    def settled():
        recorded = rows(settings.database_url)
        return len(recorded) >= EVENTS and all(status == "reported" for *_, status in recorded)

    wait_until(settled, SETTLE_SECONDS, interval=0.25,
               message=lambda: f"{row_counts(settings.database_url)} rows; retries {retries}\n{worker.log_tail()}")
    recorded = rows(settings.database_url)
    assert len(recorded) == EVENTS
    assert sorted(input_tokens for _, _, input_tokens, _ in recorded) == list(range(EVENTS)), "an event billed twice or not at all"
    by_number = {input_tokens: (row_id, key) for row_id, key, input_tokens, _ in recorded}
    for number, result in callers.results.items():
        assert by_number[number] == (result.id, result.idempotency_key), number
    identifiers = [event["identifier"] for event in stripe.meter_events()]
    assert sorted(identifiers) == sorted(str(i) for i in ids.values()), "a meter event missing or sent twice"

    # Neither process was restarted: both followed the promotion themselves (the web was
    # stopped, by the test, only once the callers were done).
    assert (worker.alive(), worker.starts, web.child.starts) == (True, 1, 1), worker.log_tail()
    print(
        f"\nfailover: rate {EVENTS / (callers.ended - callers.started):.0f} events/s, promotion "
        f"{promoted_at - killed_at:.1f} s after the kill, recording resumed {recording_resumed:.1f} s and reporting "
        f"{reporting_resumed:.1f} s after it; caller retries {dict(retries)}"
    )
