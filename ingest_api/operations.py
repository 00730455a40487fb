"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import datetime as dt
import logging
import time

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared import db, intake, metrics, models, queue

blueprint = Blueprint("operations", __name__)
log = logging.getLogger(__name__)
READINESS_TIMEOUT_SECONDS = 2


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
    failing = [name for name, ok in (("database", _database_answers(settings)), ("broker", _broker_answers(settings))) if not ok]
    if failing:
        response = jsonify(
            status="unavailable", error=f"Not ready: the {' and the '.join(failing)} did not answer.", failing=failing
        )
        response.status_code = 503
        return response
    return jsonify(status="ready")


class PipelineCollector:
    """Gauges read at scrape time: how much waits in the queues, and how old the oldest
    event not yet reported to Stripe is (Flower shows neither)."""

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
        ages = []
        try:
            with _broker(self.settings) as broker:
                depth.add_metric(["intake"], broker.xlen(intake.STREAM))
                depth.add_metric(["celery"], broker.llen(queue.celery_app.conf.task_default_queue))
                first = broker.xrange(intake.STREAM, count=1)
                if first:
                    ages.append(time.time() - int(first[0][0].split(b"-")[0]) / 1000)
        except redis.RedisError:
            log.warning("metrics: the broker did not answer")
        try:
            logs = models.UserBillableRequestLog
            with db.engine_for(self.settings.database_url).connect() as connection:
                connection.execute(sa.text(f"SET LOCAL statement_timeout = {READINESS_TIMEOUT_SECONDS * 1000}"))
                oldest_received = connection.scalar(
                    sa.select(sa.func.min(logs.received_at)).where(logs.status == models.UsageStatus.RECORDED)
                )
                failed.add_metric(
                    [],
                    connection.scalar(sa.select(sa.func.count()).where(logs.status == models.UsageStatus.FAILED))
                    + connection.scalar(
                        sa.select(sa.func.count()).where(models.RejectedUsageEvent.resolved_at.is_(None))
                    ),
                )
            if oldest_received is not None:
                ages.append((dt.datetime.now(dt.UTC) - oldest_received).total_seconds())
        except sa.exc.SQLAlchemyError:
            log.warning("metrics: the database did not answer")
        oldest.add_metric([], max(ages, default=0.0))
        yield from (depth, oldest, failed)


@blueprint.get("/metrics")
def prometheus_metrics():
    registry = metrics.registry()
    registry.register(PipelineCollector(current_app.config["SETTINGS"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
