"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared import backlog, db, intake, metrics, models, pipeline_status, queue, redis_connection

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
    return redis_connection.for_settings(
        settings,
        socket_timeout=READINESS_TIMEOUT_SECONDS,
        socket_connect_timeout=READINESS_TIMEOUT_SECONDS,
        retry=None,
    )


def _broker_answers(settings) -> redis_connection.Replication | None:
    """The primary's replication, if it answers (a ping would say no more)."""
    try:
        with _broker(settings) as broker:
            return redis_connection.replication_state(broker)
    except Exception:
        return None


def _replication_fields(settings, replication: redis_connection.Replication) -> dict:
    # Shown, not judged: a replica short makes accepts answer 503 "unknown" on every web
    # process alike, and taking this one out of the balancer would not help a caller.
    return {
        "primary": replication.primary, "replicas": replication.replicas, "replicas_required": settings.redis_ack_replicas,
        "replica_lag_bytes": replication.lag_bytes,
    }


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
    failing = [name for name, ok in (("database", answers.get("database") is True),
                                     ("broker", isinstance(answers.get("broker"), redis_connection.Replication))) if not ok]
    if failing:
        response = jsonify(
            status="unavailable", error=f"Not ready: the {' and the '.join(failing)} did not answer.", failing=failing
        )
        response.status_code = 503
        return response
    return jsonify(status="ready", redis=_replication_fields(settings, answers["broker"]))


def _broker_gauges(settings) -> dict:
    """What Redis says of the pipeline: queue lengths, the oldest waiting entry, the workers."""
    now = time.time()
    with _broker(settings) as broker:
        depths = {intake.STREAM: backlog.accepted_not_recorded(broker), queue.QUEUE: broker.llen(queue.QUEUE)}
        first = broker.xrange(intake.STREAM, count=1)
        return {
            "depths": depths,
            "oldest_waiting_age": now - intake.entry_time(first[0][0].decode()) if first else None,
            "workers_alive": pipeline_status.workers_alive(broker, now),
            "intake_last_read_age": pipeline_status.intake_last_read_age(broker, now),
            "meter": pipeline_status.meter_problem(broker),
            "last_sweep_age": pipeline_status.last_sweep_age(broker, now),
            "aging_out": backlog.accepted_aging_out(broker, dt.datetime.fromtimestamp(now, dt.UTC)),
            "replication": redis_connection.replication_state(broker),
        }


class _DatabaseGauges(NamedTuple):
    oldest_unreported_age: float | None  # of the oldest recorded-but-unreported row
    failed: int  # events waiting for an operator
    unreported: int  # rows recorded and not yet reported
    aging_out: int  # of those, the ones ageing out
    voids: dict[tuple[str, str], int]  # by (method, state): every pair, 0 when none
    oldest_pending_void_age: dict[str, float]  # by method: every method, 0 when none is pending


def _void_gauges(connection: sa.Connection) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """The voids by method and state, and the age of each method's oldest pending void by
    the database's clock, in one query (a scan of usage_voids: voids are rare, and kept)."""
    voids = models.UsageVoid
    counts = {(str(method), str(state)): 0 for method in models.VoidMethod for state in models.VoidState}
    oldest = {str(method): 0.0 for method in models.VoidMethod}
    for method, state, count, age in connection.execute(
        sa.select(
            voids.method, voids.state, sa.func.count(),
            sa.extract("epoch", sa.func.now() - sa.func.min(voids.requested_at)),
        ).group_by(voids.method, voids.state)
    ):
        counts[method, state] = count
        if state == models.VoidState.PENDING:
            # A void committed after this transaction began is younger than its now().
            oldest[method] = max(0.0, float(age))
    return counts, oldest


def _database_gauges(settings) -> _DatabaseGauges:
    """What PostgreSQL says of the pipeline: the rows not yet reported, the failed events,
    the voids."""
    logs = models.UserBillableRequestLog
    with db.engine_for(settings.database_url).connect() as connection:
        connection.execute(sa.text(f"SET LOCAL statement_timeout = {READINESS_TIMEOUT_SECONDS * 1000}"))
        oldest_received = connection.scalar(
            sa.select(sa.func.min(logs.received_at)).where(logs.status == models.UsageStatus.RECORDED)
        )
        failed = connection.scalar(
            sa.select(sa.func.count()).where(logs.status == models.UsageStatus.FAILED)
        ) + connection.scalar(sa.select(sa.func.count()).where(models.RejectedUsageEvent.resolved_at.is_(None)))
        unreported = backlog.recorded_not_reported(connection)
        aging_out = backlog.recorded_aging_out(connection, dt.datetime.now(dt.UTC))
        voids, oldest_pending_void_age = _void_gauges(connection)
    age = (dt.datetime.now(dt.UTC) - oldest_received).total_seconds() if oldest_received is not None else None
    return _DatabaseGauges(age, failed, unreported, aging_out, voids, oldest_pending_void_age)


def _gauge_families() -> dict[str, GaugeMetricFamily]:
    """The collector's gauges, empty, in the order /metrics lists them."""
    return {
        "depth": GaugeMetricFamily(
            "a700_queue_depth",
            "Entries waiting, by queue: billing:intake (events accepted, not yet recorded) and billing (Celery tasks).",
            labels=["queue"],
        ),
        "unreported": GaugeMetricFamily(
            "a700_unreported_events", "Rows recorded and not yet reported to Stripe (status recorded)."
        ),
        "oldest": GaugeMetricFamily(
            "a700_oldest_unreported_event_age_seconds",
            "Seconds since the oldest accepted event that Stripe has not confirmed was accepted.",
        ),
        "intake_oldest": GaugeMetricFamily(
            "a700_intake_oldest_entry_age_seconds",
            "Seconds the oldest entry of the intake (accepted, not recorded) has waited; absent when it is empty.",
        ),
        "aging_out": GaugeMetricFamily(
            "a700_events_aging_out",
            "Events not yet reported that will be too old for Stripe (35 days less 5 minutes) within 12 hours, by "
            "stage: accepted (in the intake; of the oldest 10,000 entries that waited 11 h 55 min or more, the only "
            "ones that can be) and recorded (rows not yet reported).",
            labels=["stage"],
        ),
        "failed": GaugeMetricFamily(
            "a700_failed_events", "Events waiting for an operator: failed rows and unresolved rejected events."
        ),
        "voids": GaugeMetricFamily(
            "a700_voids",
            "Voids of usage events, by method (never_sent, stripe_cancel, stripe_negative_event, manual_credit) and "
            "state (pending, completed, failed); every method and state is given, 0 when none.",
            labels=["method", "state"],
        ),
        "void_oldest_pending": GaugeMetricFamily(
            "a700_void_oldest_pending_seconds",
            "Seconds since the oldest pending void of each method was asked for, by the database's clock; 0 when "
            "none is pending.",
            labels=["method"],
        ),
        "workers": GaugeMetricFamily(
            "a700_workers_alive", "Celery workers that said they are alive in the last 15 seconds."
        ),
        "last_read": GaugeMetricFamily(
            "a700_intake_last_read_age_seconds", "Seconds since a worker last read the intake (absent if none ever did)."
        ),
        "last_sweep": GaugeMetricFamily(
            "a700_last_sweep_age_seconds", "Seconds since beat's safety sweep last ran (every 15 s); absent if never."
        ),
        "meter_ready": GaugeMetricFamily(
            "a700_stripe_meter_ready",
            "1 if the reporters last found Stripe's billing meter able to count events, 0 if not (the reason is in "
            "the worker's log); absent if no reporter looked in the last 5 minutes.",
        ),
        "primary": GaugeMetricFamily(
            "a700_redis_primary_info", "1, labelled with the address of the Redis primary this process reaches now.",
            labels=["address"],
        ),
        "replicas": GaugeMetricFamily("a700_redis_replicas_connected", "Replicas connected to the Redis primary."),
        "replicas_required": GaugeMetricFamily(
            "a700_redis_replicas_required", "Replicas that must confirm an accept before its 2xx (REDIS_ACK_REPLICAS)."
        ),
        "replica_lag": GaugeMetricFamily(
            "a700_redis_replica_lag_bytes", "How far the farthest replica is behind the primary; absent without replicas."
        ),
        "up": GaugeMetricFamily(
            "a700_dependency_up", "1 if the dependency answered the scrape's queries in time, else 0.", labels=["dependency"]
        ),
    }


def _add_broker_samples(gauges: dict[str, GaugeMetricFamily], answer: dict) -> None:
    for name, length in answer["depths"].items():
        gauges["depth"].add_metric([name], length)
    gauges["workers"].add_metric([], answer["workers_alive"])
    if answer["intake_last_read_age"] is not None:
        gauges["last_read"].add_metric([], answer["intake_last_read_age"])
    if answer["oldest_waiting_age"] is not None:
        gauges["intake_oldest"].add_metric([], answer["oldest_waiting_age"])
    if answer["last_sweep_age"] is not None:
        gauges["last_sweep"].add_metric([], answer["last_sweep_age"])
    looked, problem = answer["meter"]
    if looked:
        gauges["meter_ready"].add_metric([], 0 if problem else 1)
    gauges["aging_out"].add_metric(["accepted"], answer["aging_out"])
    replication = answer["replication"]
    gauges["primary"].add_metric([replication.primary], 1)
    gauges["replicas"].add_metric([], replication.replicas)
    if replication.lag_bytes is not None:
        gauges["replica_lag"].add_metric([], replication.lag_bytes)


def _add_database_samples(gauges: dict[str, GaugeMetricFamily], answer: _DatabaseGauges) -> None:
    gauges["failed"].add_metric([], answer.failed)
    gauges["unreported"].add_metric([], answer.unreported)
    gauges["aging_out"].add_metric(["recorded"], answer.aging_out)
    for (method, state), count in answer.voids.items():
        gauges["voids"].add_metric([method, state], count)
    for method, age in answer.oldest_pending_void_age.items():
        gauges["void_oldest_pending"].add_metric([method], age)


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
        gauges = _gauge_families()
        broker_answer, database_answer = self._read_sources()
        gauges["up"].add_metric(["broker"], 1 if broker_answer is not None else 0)
        gauges["up"].add_metric(["database"], 1 if database_answer is not None else 0)
        gauges["replicas_required"].add_metric([], self.settings.redis_ack_replicas)
        if broker_answer is not None:
            _add_broker_samples(gauges, broker_answer)
        if database_answer is not None:
            _add_database_samples(gauges, database_answer)
        if broker_answer is not None and database_answer is not None:
            ages = [
                age for age in (broker_answer["oldest_waiting_age"], database_answer.oldest_unreported_age)
                if age is not None
            ]
            gauges["oldest"].add_metric([], max(ages, default=0.0))
        yield from gauges.values()

    def _read_sources(self) -> tuple[dict | None, _DatabaseGauges | None]:
        """What the broker and the database answered in time; None for one that did not."""
        settings = self.settings
        answers = _bounded(
            {
                "broker": (("metrics-broker", settings.broker_url), lambda: _broker_gauges(settings)),
                "database": (("metrics-database", settings.database_url), lambda: _database_gauges(settings)),
            },
            CHECK_DEADLINE_SECONDS,
        )
        broker_answer, database_answer = answers.get("broker"), answers.get("database")
        if not isinstance(broker_answer, dict):
            log.warning("metrics: the broker did not answer", extra={"error": repr(broker_answer)})
            broker_answer = None
        if not isinstance(database_answer, _DatabaseGauges):
            log.warning("metrics: the database did not answer", extra={"error": repr(database_answer)})
            database_answer = None
        return broker_answer, database_answer


@blueprint.get("/metrics")
def prometheus_metrics():
    registry = metrics.registry()
    registry.register(PipelineCollector(current_app.config["SETTINGS"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
