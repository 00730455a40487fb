"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared import db, intake, metrics, models, queue

blueprint = Blueprint("operations", __name__)
log = logging.getLogger(__name__)
READINESS_TIMEOUT_SECONDS = 2
# However the database or the broker fails (refused, slow, or a frozen server holding a
# pooled connection open, which no client-side timeout of the driver bounds), /readyz and
# /metrics answer within this.
CHECK_DEADLINE_SECONDS = READINESS_TIMEOUT_SECONDS + 1

_running: dict[tuple[str, str], threading.Thread] = {}
_running_lock = threading.Lock()


def _start(key: tuple[str, str], name: str, call: Callable[[], object], results: dict) -> tuple[threading.Thread, bool]:
    """(thread, True) for a call started now in a daemon thread, its result (or the
    exception it raised) going to ``results[name]``; (thread, False) if a call of the
    same key still runs from an earlier request."""
    with _running_lock:
        running = _running.get(key)
        if running is not None and running.is_alive():
            return running, False

        def run():
            try:
                results[name] = call()
            except Exception as error:  # noqa: BLE001 - reported as the result
                results[name] = error
            finally:
                with _running_lock:
                    if _running.get(key) is threading.current_thread():
                        del _running[key]

        thread = threading.Thread(target=run, name=f"operations-{name}", daemon=True)
        _running[key] = thread
    thread.start()
    return thread, True


def _bounded(calls: dict[str, tuple[tuple[str, str], Callable[[], object]]], timeout: float) -> dict[str, object]:
    """Run the calls concurrently, each in a daemon thread, and wait at most ``timeout``.

    Returns ``{name: result}`` of the calls that finished in time (an exception raised is
    its result). A call whose key (what, which server) still runs from an earlier request
    is not started a second time: a hung server ties up one thread per process, not one
    per probe. If that earlier call returns within the time, the call is made afresh in
    the time left, so the first answer after a server recovers is already right.
    """
    deadline = time.monotonic() + timeout
    results: dict[str, object] = {}
    started = {name: _start(key, name, call, results) for name, (key, call) in calls.items()}
    for name, (thread, fresh) in started.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if not fresh and not thread.is_alive():
            key, call = calls[name]
            thread, fresh = _start(key, name, call, results)
            if fresh:
                thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results[name] for name in calls if name in results}


@blueprint.get("/healthz")
def healthz():
    return jsonify(status="ok")


def _database_answers(settings) -> bool:
    try:
        with db.engine_for(settings.database_url).connect() as connection:
            connection.execute(sa.text(f"SET LOCAL statement_timeout = {READINESS_TIMEOUT_SECONDS * 1000}"))
            connection.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False


def _broker(settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.broker_url,
        socket_timeout=READINESS_TIMEOUT_SECONDS,
        socket_connect_timeout=READINESS_TIMEOUT_SECONDS,
        retry=None,
    )


def _broker_answers(settings) -> bool:
    try:
        with _broker(settings) as broker:
            broker.ping()
        return True
    except Exception:
        return False


@blueprint.get("/readyz")
def readyz():
    settings = current_app.config["SETTINGS"]
    answers = _bounded(
        {
            "database": (("readyz-database", settings.database_url), lambda: _database_answers(settings)),
            "broker": (("readyz-broker", settings.broker_url), lambda: _broker_answers(settings)),
        },
        CHECK_DEADLINE_SECONDS,
    )
    failing = [name for name in ("database", "broker") if answers.get(name) is not True]
    if failing:
        response = jsonify(
            status="unavailable", error=f"Not ready: the {' and the '.join(failing)} did not answer.", failing=failing
        )
        response.status_code = 503
        return response
    return jsonify(status="ready")


def _broker_gauges(settings) -> tuple[int, int, float | None]:
    """(intake stream length, celery queue length, age of the oldest stream entry or None)."""
    with _broker(settings) as broker:
        intake_depth = broker.xlen(intake.STREAM)
        celery_depth = broker.llen(queue.celery_app.conf.task_default_queue)
        first = broker.xrange(intake.STREAM, count=1)
    age = time.time() - int(first[0][0].split(b"-")[0]) / 1000 if first else None
    return intake_depth, celery_depth, age


def _database_gauges(settings) -> tuple[float | None, int]:
    """(age of the oldest recorded-but-unreported row or None, events waiting for an operator)."""
    logs = models.UserBillableRequestLog
    with db.engine_for(settings.database_url).connect() as connection:
        connection.execute(sa.text(f"SET LOCAL statement_timeout = {READINESS_TIMEOUT_SECONDS * 1000}"))
        oldest_received = connection.scalar(
            sa.select(sa.func.min(logs.received_at)).where(logs.status == models.UsageStatus.RECORDED)
        )
        failed = connection.scalar(
            sa.select(sa.func.count()).where(logs.status == models.UsageStatus.FAILED)
        ) + connection.scalar(sa.select(sa.func.count()).where(models.RejectedUsageEvent.resolved_at.is_(None)))
    age = (dt.datetime.now(dt.UTC) - oldest_received).total_seconds() if oldest_received is not None else None
    return age, failed


class PipelineCollector:
    """Gauges read at scrape time: how much waits in the queues, and how old the oldest
    event not yet reported to Stripe is (Flower shows neither).

    A gauge whose source did not answer (within ``CHECK_DEADLINE_SECONDS``) has no sample
    in that scrape rather than a reassuring 0: the oldest unreported age, in particular,
    is only given when both the stream and the database were read.
    ``a700_dependency_up`` says which source answered.
    """

    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        depth = GaugeMetricFamily("a700_queue_depth", "Messages waiting, by queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "a700_oldest_unreported_event_age_seconds",
            "Seconds since the oldest accepted event that Stripe has not confirmed was accepted.",
        )
        failed = GaugeMetricFamily(
            "a700_failed_events", "Events waiting for an operator: failed rows and unresolved rejected events."
        )
        up = GaugeMetricFamily(
            "a700_dependency_up", "1 if the dependency answered the scrape's queries in time, else 0.", labels=["dependency"]
        )
        settings = self.settings
        answers = _bounded(
            {
                "broker": (("metrics-broker", settings.broker_url), lambda: _broker_gauges(settings)),
                "database": (("metrics-database", settings.database_url), lambda: _database_gauges(settings)),
            },
            CHECK_DEADLINE_SECONDS,
        )
        broker_answer, database_answer = answers.get("broker"), answers.get("database")
        broker_ok, database_ok = isinstance(broker_answer, tuple), isinstance(database_answer, tuple)
        if not broker_ok:
            log.warning("metrics: the broker did not answer", extra={"error": repr(broker_answer)})
        if not database_ok:
            log.warning("metrics: the database did not answer", extra={"error": repr(database_answer)})
        up.add_metric(["broker"], 1 if broker_ok else 0)
        up.add_metric(["database"], 1 if database_ok else 0)
        if broker_ok:
            depth.add_metric(["intake"], broker_answer[0])
            depth.add_metric(["celery"], broker_answer[1])
        if database_ok:
            failed.add_metric([], database_answer[1])
        if broker_ok and database_ok:
            ages = [age for age in (broker_answer[2], database_answer[0]) if age is not None]
            oldest.add_metric([], max(ages, default=0.0))
        yield from (depth, oldest, failed, up)


@blueprint.get("/metrics")
def prometheus_metrics():
    registry = metrics.registry()
    registry.register(PipelineCollector(current_app.config["SETTINGS"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
