"""The worker's processes from start to exit, as Celery's signals announce them: JSON
logs, the settings' start-time checks (``shared.start_checks``), the metrics the main
process serves, fresh connections in each forked pool process, and the liveness
heartbeat (``/metrics``: a700_workers_alive).

Nothing is connected at import: ``connect()`` is called where the Celery app is built
(``worker.celery_app``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

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

from shared import db, metrics, pipeline_status, queue, redis_connection, start_checks, structured_logging
from shared.config import get_settings


def connect() -> None:
    """Connect the handlers below to Celery's signals (connecting twice is harmless)."""
    celeryd_init.connect(_start)  # the worker's first moment: its start-up warnings are JSON too
    setup_logging.connect(_json_logs)
    worker_init.connect(_serve_metrics)
    worker_process_init.connect(_fresh_connections_after_fork)
    worker_process_shutdown.connect(_forget_metrics)
    worker_ready.connect(_announce)
    worker_shutdown.connect(_say_gone)


def _json_logs(**_):
    # Celery's own handlers are replaced by one JSON line per log record, secrets redacted.
    structured_logging.configure()


def _start(**_):
    _json_logs()
    start_checks.check(get_settings())


def _serve_metrics(**_):
    # On a machine without a web process, the worker's main process serves the summed
    # metrics of its pool processes itself.
    port = get_settings().worker_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="0.0.0.0", registry=metrics.registry())


def _fresh_connections_after_fork(**_):
    # A forked pool process must not share the parent's PostgreSQL or Redis sockets.
    db.dispose_engines()


def _forget_metrics(pid=None, **_):
    metrics.process_exited(pid)


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """The main process's liveness thread: it says ``hostname`` is alive through
    ``broker`` every few seconds until ``stop`` is set."""

    hostname: str
    broker: redis.Redis
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._beat, name="liveness", daemon=True).start()

    def _beat(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(redis.RedisError):
                pipeline_status.worker_alive(self.broker, self.hostname, time.time())
            self.stop.wait(pipeline_status.HEARTBEAT_SECONDS)

    def end(self) -> None:
        self.stop.set()
        with contextlib.suppress(redis.RedisError):
            pipeline_status.worker_gone(self.broker, self.hostname)


# The heartbeat of this main process, once the worker is ready.
_heartbeat: Heartbeat | None = None


def _announce(sender=None, **_):
    """A worker that starts sweeps at once (what a dead worker left waits no longer than
    needed) and says it is alive every few seconds."""
    global _heartbeat
    queue.send(queue.SWEEP)
    hostname = getattr(sender, "hostname", None) or f"worker@{os.getpid()}"
    broker = redis_connection.for_settings(get_settings(), socket_timeout=5, socket_connect_timeout=5)
    _heartbeat = Heartbeat(hostname=hostname, broker=broker)
    _heartbeat.start()


def _say_gone(**_):
    if _heartbeat is not None:
        _heartbeat.end()
