"""The worker's view of the shared Celery application: its tasks and per-process setup."""

from celery.signals import celeryd_init, setup_logging, worker_init, worker_process_init, worker_process_shutdown

from shared.queue import celery_app as app

app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@celeryd_init.connect  # the worker's first moment: its start-up warnings are JSON too
@setup_logging.connect
def _json_logs(**_):
    # Celery's own handlers are replaced by one JSON line per log record, secrets redacted.
    from shared import structured_logging

    structured_logging.configure()


@worker_init.connect
def _serve_metrics(**_):
    # On a machine without a web process, the worker's main process serves the summed
    # metrics of its pool processes itself.
    from shared import metrics
    from shared.config import get_settings

    port = get_settings().worker_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="0.0.0.0", registry=metrics.registry())


@worker_process_init.connect
def _fresh_connections_after_fork(**_):
    # A forked pool process must not share the parent's PostgreSQL or Redis sockets.
    from shared import db

    db.dispose_engines()


@worker_process_shutdown.connect
def _forget_metrics(pid=None, **_):
    from shared import metrics

    metrics.process_exited(pid)
