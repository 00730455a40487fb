"""``/metrics`` of a real run: a gunicorn with two workers, a Celery worker with beat and
the local Stripe server, all writing into one fresh ``PROMETHEUS_MULTIPROC_DIR``. What the
scrape says must be what happened, summed over every process: each web worker's accepted
events, each pool process's recorded and reported events and Stripe calls."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import time

import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from devtools.children import http_get, wait_until
from ingest_api import create_app
from shared import db, intake, models, usage_voids
from tests.support.billing import BATCH_URL, URL, log_row, status_counts, store
from tests.support.http_probes import get_within, http
from tests.support.log_lines import json_lines
from tests.support.service_processes import SETTLE_SECONDS

pytestmark = pytest.mark.slow

SINGLE = 40
BATCH = 20


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def total(scraped: dict, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in scraped.items() if n == name and set(labels.items()) <= ls)


def test_metrics_sum_a_run_across_two_web_workers_and_the_celery_worker(
    settings, world, stripe, start_gunicorn, start_worker, metrics_dir
):
    shared_dir = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    web = start_gunicorn(settings, workers=2, **shared_dir)
    worker = start_worker(settings, **shared_dir)
    headers = {"Authorization": f"Bearer {world.app_password}"}

    # Single events from 8 connections at once, so that both web workers take some.
    def post_one(index: int):
        return http("POST", web.url + URL, json_body=world.body(input_tokens=index), headers=headers)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post_one, range(SINGLE)))
    assert [status for status, _, _ in answers] == [202] * SINGLE, answers
    status, _, body = http(
        "POST", web.url + BATCH_URL, json_body={"events": [world.body(output_tokens=n) for n in range(BATCH)]}, headers=headers
    )
    assert status == 200 and [r["status"] for r in body["results"]] == ["queued"] * BATCH, body

    wait_until(
        lambda: status_counts(settings) == {"reported": SINGLE + BATCH},
        SETTLE_SECONDS,
        message=lambda: f"{status_counts(settings)}\n{worker.log_tail()}",
    )

    # Both web workers served: their pids in the request lines, each with a share of the posts.
    request_lines = [r for r in json_lines(web.stderr_path) if r["name"] == "ingest_api.requests"]
    by_pid = collections.Counter(r["pid"] for r in request_lines if r["route"] == "usage.record_usage" and r["status"] == 202)
    assert sum(by_pid.values()) == SINGLE
    assert len(by_pid) == 2, f"one web worker served every post: {by_pid}"
    assert web.process.pid not in by_pid

    status, text = http_get(f"{web.url}/metrics")
    assert status == 200
    scraped = samples(text.decode())

    assert value(scraped, "a700_events_accepted_total") == SINGLE + BATCH
    assert value(scraped, "a700_events_recorded_total") == SINGLE + BATCH
    assert value(scraped, "a700_events_reported_total") == SINGLE + BATCH
    assert value(scraped, "a700_events_failed_total") == 0
    assert value(scraped, "a700_events_rejected_total") == 0
    assert value(scraped, "a700_enqueue_failures_total") == 0
    assert value(scraped, "a700_http_requests_total", route="usage.record_usage", method="POST", status="202") == SINGLE
    assert value(scraped, "a700_http_requests_total", route="usage.record_usage_batch", method="POST", status="200") == 1
    assert value(scraped, "a700_accept_latency_seconds_count", route="usage.record_usage") == SINGLE
    assert value(scraped, "a700_accept_latency_seconds_count", route="usage.record_usage_batch") == 1
    assert total(scraped, "a700_stripe_requests_total", outcome="ok") > 0
    assert total(scraped, "a700_stripe_requests_total") == total(scraped, "a700_stripe_request_duration_seconds_count")
    assert value(scraped, "a700_stripe_requests_total", api="v2_stream", outcome="ok") >= 1
    assert value(scraped, "a700_queue_depth", queue="billing:intake") == 0
    assert value(scraped, "a700_queue_depth", queue="billing") is not None
    assert value(scraped, "a700_oldest_unreported_event_age_seconds") == 0
    assert value(scraped, "a700_failed_events") == 0
    assert value(scraped, "a700_dependency_up", dependency="database") == 1
    assert value(scraped, "a700_dependency_up", dependency="broker") == 1

    # Each web worker's share is in the sum: its own counter file in the shared directory.
    per_process = {path.name for path in metrics_dir.glob("counter_*.db")}
    for pid in by_pid:
        assert f"counter_{pid}.db" in per_process, per_process


def test_oldest_unreported_age_grows_while_no_worker_runs(settings, world, client):
    for _ in range(2):
        assert client.post(URL, json=world.body(), headers={"Authorization": f"Bearer {world.jwt}"}).status_code == 202
    first = samples(client.get("/metrics").get_data(as_text=True))
    wait_until(
        lambda: value(samples(client.get("/metrics").get_data(as_text=True)), "a700_oldest_unreported_event_age_seconds") > 1.0,
        30, interval=0.2,
    )
    assert value(first, "a700_queue_depth", queue="billing:intake") == 2
    assert value(first, "a700_oldest_unreported_event_age_seconds") >= 0


def test_events_about_to_be_too_old_for_stripe_are_counted_before_they_are(settings, world, client):
    """An event near the end of the window that waits in our pipeline (an outage) would
    fail "Too old for Stripe" without a warning (finding 2 of issue 19). The reporter sends
    nothing older than 35 days less 5 minutes; the gauge counts what gets there within 12 h."""
    now = dt.datetime.now(dt.UTC)
    within_12_hours, with_13_hours_left = now - dt.timedelta(days=34, hours=12), now - dt.timedelta(days=34, hours=11)
    store(settings, *[
        log_row(
            user_id=world.user.id, organization_id=world.organization.id, service_id=world.service.id, price=world.price,
            status=status, occurred_at=occurred_at,
        )
        for status, occurred_at in [
            (models.UsageStatus.RECORDED, within_12_hours),
            (models.UsageStatus.RECORDED, with_13_hours_left),
            (models.UsageStatus.REPORTED, within_12_hours),
        ]
    ])
    # Intake entries accepted 20 hours ago (a recorder outage): one about to age out, one
    # of an event of the day, and one that is no event at all.
    appended_ms = int((time.time() - 20 * 3600) * 1000)
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        for sequence, message in enumerate(
            [world.event(occurred_at=within_12_hours).to_message(), world.event(occurred_at=now).to_message(), b"\xff not json"]
        ):
            broker.xadd(intake.STREAM, {intake.EVENT_FIELD: message}, id=f"{appended_ms}-{sequence}")
    finally:
        broker.close()

    scraped = samples(client.get("/metrics").get_data(as_text=True))

    assert value(scraped, "a700_events_aging_out", stage="accepted") == 1
    assert value(scraped, "a700_events_aging_out", stage="recorded") == 1


def test_healthy_nothing_is_aging_out(world, client):
    assert client.post(URL, json=world.body(), headers={"Authorization": f"Bearer {world.jwt}"}).status_code == 202

    scraped = samples(client.get("/metrics").get_data(as_text=True))

    assert value(scraped, "a700_events_aging_out", stage="accepted") == 0
    assert value(scraped, "a700_events_aging_out", stage="recorded") == 0


def _database_now(settings) -> dt.datetime:
    with db.transaction(settings.database_url) as session:
        return session.scalar(sa.select(sa.func.now()))


def _voids(settings, world, *voids: tuple[models.VoidMethod, models.VoidState, dt.timedelta]) -> None:
    """A log row and its void for each (method, state, how long ago it was asked for), by
    the database's clock; a completed void's row is voided, any other's reported."""
    now = _database_now(settings)
    rows = [
        log_row(
            user_id=world.user.id, organization_id=world.organization.id, service_id=world.service.id, price=world.price,
            status=models.UsageStatus.VOIDED if state == models.VoidState.COMPLETED else models.UsageStatus.REPORTED,
            stripe_first_sent_at=now - ago - dt.timedelta(minutes=1),
        )
        for _, state, ago in voids
    ]
    store(settings, *rows)
    store(settings, *[
        models.UsageVoid(
            row_id=row.id, reason="sent twice", requested_by="operator:test", method=method, state=state,
            requested_at=now - ago, completed_at=now if state == models.VoidState.COMPLETED else None,
            error="Stripe refused it" if state == models.VoidState.FAILED else None,
        )
        for row, (method, state, ago) in zip(rows, voids, strict=True)
    ])


def _void_samples(scraped: dict) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    counts = {
        (dict(labels)["method"], dict(labels)["state"]): v for (name, labels), v in scraped.items() if name == "a700_voids"
    }
    oldest = {dict(labels)["method"]: v for (name, labels), v in scraped.items() if name == "a700_void_oldest_pending_seconds"}
    return counts, oldest


def test_voids_are_counted_by_method_and_state_and_the_oldest_pending_is_aged(settings, world, client):
    method, state, minutes = models.VoidMethod, models.VoidState, lambda m: dt.timedelta(minutes=m)
    _voids(
        settings, world,
        (method.NEVER_SENT, state.COMPLETED, minutes(90)),
        (method.STRIPE_CANCEL, state.PENDING, minutes(40)),
        (method.STRIPE_CANCEL, state.PENDING, minutes(5)),
        (method.STRIPE_CANCEL, state.FAILED, minutes(180)),  # failed: not the oldest pending
        (method.STRIPE_CANCEL, state.COMPLETED, minutes(300)),
        (method.STRIPE_NEGATIVE_EVENT, state.COMPLETED, minutes(20)),
        (method.MANUAL_CREDIT, state.PENDING, minutes(120)),
        (method.MANUAL_CREDIT, state.PENDING, minutes(61)),
        (method.MANUAL_CREDIT, state.COMPLETED, minutes(600)),
    )

    counts, oldest = _void_samples(samples(client.get("/metrics").get_data(as_text=True)))

    expected = {(str(m), str(s)): 0 for m in models.VoidMethod for s in models.VoidState} | {
        ("never_sent", "completed"): 1,
        ("stripe_cancel", "pending"): 2,
        ("stripe_cancel", "failed"): 1,
        ("stripe_cancel", "completed"): 1,
        ("stripe_negative_event", "completed"): 1,
        ("manual_credit", "pending"): 2,
        ("manual_credit", "completed"): 1,
    }
    assert counts == expected
    assert oldest.keys() == {"never_sent", "stripe_cancel", "stripe_negative_event", "manual_credit"}
    assert oldest["stripe_cancel"] == pytest.approx(40 * 60, abs=5)
    assert oldest["manual_credit"] == pytest.approx(120 * 60, abs=5)
    assert oldest["never_sent"] == 0
    assert oldest["stripe_negative_event"] == 0


def test_without_voids_every_void_series_is_there_at_0(world, client):
    counts, oldest = _void_samples(samples(client.get("/metrics").get_data(as_text=True)))

    assert len(counts) == 4 * 3
    assert set(counts.values()) == {0}
    assert oldest == {"never_sent": 0, "stripe_cancel": 0, "stripe_negative_event": 0, "manual_credit": 0}


def test_a_void_asked_for_through_the_api_is_counted_pending(settings, world, client):
    """A row reported a minute ago, voided as callers do: a cancel, pending until the
    reporter (none runs here) has Stripe take it back."""
    row = log_row(
        user_id=world.user.id, organization_id=world.organization.id, service_id=world.service.id, price=world.price,
        status=models.UsageStatus.REPORTED, stripe_first_sent_at=_database_now(settings) - dt.timedelta(minutes=1),
    )
    store(settings, row)
    with db.transaction(settings.database_url) as session:
        usage_voids.request(session, row.id, "sent twice", "operator:test")

    counts, oldest = _void_samples(samples(client.get("/metrics").get_data(as_text=True)))

    assert counts[("stripe_cancel", "pending")] == 1
    assert sum(counts.values()) == 1
    assert 0 <= oldest["stripe_cancel"] < 60




def _scrape_within(client, seconds: float) -> dict:
    response, _ = get_within(client, "/metrics", seconds)
    assert response.status_code == 200
    return samples(response.get_data(as_text=True))


def test_a_scrape_is_bounded_and_says_so_when_postgresql_hangs(private_settings, private_postgres):
    client = create_app(private_settings).test_client()
    scraped = _scrape_within(client, 5)
    assert value(scraped, "a700_dependency_up", dependency="database") == 1
    assert value(scraped, "a700_oldest_unreported_event_age_seconds") == 0

    private_postgres.pause()
    try:
        scraped = _scrape_within(client, 5)
    finally:
        private_postgres.resume()
    assert value(scraped, "a700_dependency_up", dependency="database") == 0
    assert value(scraped, "a700_dependency_up", dependency="broker") == 1
    # No reassuring 0 while the database cannot be read.
    assert value(scraped, "a700_oldest_unreported_event_age_seconds") is None
    assert value(scraped, "a700_failed_events") is None
    assert value(scraped, "a700_voids", method="manual_credit", state="pending") is None
    assert value(scraped, "a700_void_oldest_pending_seconds", method="manual_credit") is None
    assert value(scraped, "a700_queue_depth", queue="billing:intake") == 0

    scraped = _scrape_within(client, 5)
    assert value(scraped, "a700_dependency_up", dependency="database") == 1


def test_a_worker_host_without_a_web_process_serves_its_own_metrics(settings, world, client, start_worker, metrics_dir):
    from shared.embedded import free_port

    port = free_port()
    worker = start_worker(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), WORKER_METRICS_PORT=str(port))
    assert client.post(URL, json=world.body(), headers={"Authorization": f"Bearer {world.app_password}"}).status_code == 202

    def reported_on_the_worker_port() -> bool:
        try:
            status, _, text = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=2)
        except OSError:
            return False
        return status == 200 and "a700_events_reported_total 1.0" in text

    wait_until(reported_on_the_worker_port, SETTLE_SECONDS, message=lambda: worker.log_tail())


def test_metrics_add_up_in_the_procfile_layout(settings, world, stripe, start_gunicorn, flower_process, tmp_path):
    """web, worker, beat and flower as separate processes of one host, as the Procfile and
    ``make run`` run them, with no PROMETHEUS_MULTIPROC_DIR in their environment (the
    default under the host's var/). The `celery` command used to import prometheus-client
    (through Flower's command plugin) before the directory was set, so the worker counted
    in its own memory: recorded and reported stayed 0, and Flower's series leaked in."""
    import subprocess
    import sys

    from devtools.children import stop_gracefully
    from tests.support.service_processes import PROJECT_ROOT, service_env

    layout = {"PROMETHEUS_MULTIPROC_DIR": None, "AGENT700_VAR_DIR": str(tmp_path / "host-var")}
    web = start_gunicorn(settings, workers=2, **layout)
    env = service_env(settings, stripe.url, layout)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "--quiet", "--app", "worker", *args],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for args in (
            ["worker", "--concurrency", "2", "--loglevel", "INFO"],
            ["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
        )
    ]
    flower = flower_process(settings, FLOWER_BASIC_AUTH="operator:metrics", **layout).start()
    try:
        headers = {"Authorization": f"Bearer {world.app_password}"}
        for index in range(SINGLE):
            assert http("POST", web.url + URL, json_body=world.body(input_tokens=index), headers=headers)[0] == 202
        wait_until(lambda: status_counts(settings) == {"reported": SINGLE}, SETTLE_SECONDS, message=lambda: str(status_counts(settings)))

        def scraped():
            return samples(http_get(f"{web.url}/metrics")[1].decode())

        wait_until(lambda: value(scraped(), "a700_events_reported_total") == SINGLE, 10)
        metrics = scraped()
        assert value(metrics, "a700_events_accepted_total") == SINGLE
        assert value(metrics, "a700_events_recorded_total") == SINGLE
        assert value(metrics, "a700_events_reported_total") == SINGLE
        assert total(metrics, "a700_stripe_requests_total", outcome="ok") >= 1
        assert {dict(labels)["queue"] for name, labels in metrics if name == "a700_queue_depth"} == {"billing", "billing:intake"}
        assert value(metrics, "a700_workers_alive") == 1
        assert not [name for name, _ in metrics if name.startswith("flower")]
        assert flower.alive()

        # The worker gone, the web says so (A700WorkerGone), though /readyz need not.
        stop_gracefully(processes[0], grace=20)
        wait_until(lambda: value(scraped(), "a700_workers_alive") == 0, 30, message=lambda: str(value(scraped(), "a700_workers_alive")))
    finally:
        for process in processes:
            stop_gracefully(process, grace=20)
