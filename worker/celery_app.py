"""The worker's view of the shared Celery application: the task base class, beat's
scheduler and the per-process setup (logs, metrics, fresh connections after fork, liveness)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import celery
import celery.beat
import kombu.transport.redis
import redis
from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy import orm

from shared import db, metrics, pipeline_status, queue, structured_logging
from shared.config import Settings, get_settings
from shared.queue import celery_app as app


def broker_client(broker_url: str) -> redis.Redis:
    """The pipeline's Redis client. Text that is not UTF-8 (only a hand-made stream entry
    could hold such) is read escaped, so that the recorder keeps it aside as unreadable
    instead of failing on it batch after batch."""
    return redis.Redis.from_url(
        broker_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10,
        decode_responses=True, encoding_errors="backslashreplace",
    )


class BillingTask(celery.Task):
    """The base of every pipeline task: its settings, database transactions, the broker
    and Stripe come from here, one of each per worker process."""

    # A result names the events its task recorded or reported, so that searching an
    # event id in Flower finds them: up to 2,000 ids (about 80 kB), far above Celery's
    # default 1,024 characters of a result's repr.
    resultrepr_maxsize = 128 * 1024
    _per_process: tuple[int, redis.Redis, object] | None = None

    @property
    def settings(self) -> Settings:
        return get_settings()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[orm.Session]:
        """A session in one transaction: committed when the block ends, else rolled back."""
        with db.transaction(self.settings.database_url) as session:
            yield session

    @property
    def broker(self) -> redis.Redis:
        return self._resources()[1]

    @property
    def meter(self):
        """The Stripe meter reporter (``worker.stripe_reporting.StripeMeter``)."""
        return self._resources()[2]

    def _resources(self) -> tuple[int, redis.Redis, object]:
        # Built in the pool process that uses them, never inherited across a fork.
        resources = BillingTask._per_process
        if resources is None or resources[0] != os.getpid():
            from worker.stripe_reporting import StripeMeter

            settings = self.settings
            broker = broker_client(settings.broker_url)
            resources = BillingTask._per_process = (os.getpid(), broker, StripeMeter(settings, api=settings.stripe_meter_api))
        return resources


app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


class BeatScheduler(celery.beat.PersistentScheduler):
    """Celery's own scheduler (a shelve file), which first makes its file's directory:
    by default the var directory (celeryconfig), which the first beat of an installed
    service may not find."""

    def setup_schedule(self):
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


def _restore_unacked_unless_gone(restore_unacked):
    """kombu (5.7) puts a closing Redis channel's unacknowledged messages back through the
    channel's transport. After the broker drops the connection (a Redis restart), the
    consumer closes the channel when that transport is already let go, and the
    AttributeError that follows ends the worker ("Unrecoverable error: 'NoneType' object
    has no attribute 'hostname'"; 4 of 7 Redis restarts in a test). The messages are
    safe meanwhile: Redis keeps them in its unacked set and hands them out again after
    the visibility timeout, and the sweep wakes whatever they were to wake. So the
    worker lets the restore go and lives on to reconnect."""

    @functools.wraps(restore_unacked)
    def restore(qos, client=None):
        if client is None and getattr(getattr(qos.channel, "connection", None), "client", None) is None:
            logging.getLogger(__name__).warning("broker connection gone: unacknowledged messages stay in Redis for later")
            return None
        return restore_unacked(qos, client)

    return restore


kombu.transport.redis.QoS.restore_unacked = _restore_unacked_unless_gone(kombu.transport.redis.QoS.restore_unacked)


@celeryd_init.connect  # the worker's first moment: its start-up warnings are JSON too
@setup_logging.connect
def _json_logs(**_):
    # Celery's own handlers are replaced by one JSON line per log record, secrets redacted.
    structured_logging.configure()


@worker_init.connect
def _serve_metrics(**_):
    # On a machine without a web process, the worker's main process serves the summed
    # metrics of its pool processes itself.
    port = get_settings().worker_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="0.0.0.0", registry=metrics.registry())


@worker_process_init.connect
def _fresh_connections_after_fork(**_):
    # A forked pool process must not share the parent's PostgreSQL or Redis sockets.
    db.dispose_engines()


@worker_process_shutdown.connect
def _forget_metrics(pid=None, **_):
    metrics.process_exited(pid)


_heartbeat: dict[str, object] = {}


@worker_ready.connect
def _announce(sender=None, **_):
    """A worker that starts sweeps at once (what a dead worker left waits no longer than
    needed) and says it is alive every few seconds (``/metrics``: a700_workers_alive)."""
    queue.send(queue.SWEEP)
    hostname = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    broker = redis.Redis.from_url(get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5)
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError):
                pipeline_status.worker_alive(broker, hostname, time.time())
            stop.wait(pipeline_status.HEARTBEAT_SECONDS)

    _heartbeat.update(stop=stop, broker=broker, hostname=hostname)
    threading.Thread(target=beat, name="liveness", daemon=True).start()


@worker_shutdown.connect
def _say_gone(**_):
    if _heartbeat:
        _heartbeat["stop"].set()
        with contextlib.suppress(redis.RedisError):
            pipeline_status.worker_gone(_heartbeat["broker"], _heartbeat["hostname"])
