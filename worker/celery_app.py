"""The worker's view of the shared Celery application: its tasks and per-process setup."""

from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from shared.queue import celery_app as app

app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@setup_logging.connect
def _json_logs(**_):
    # Celery's own handlers are replaced by one JSON line per log record, secrets redacted.
    from shared import structured_logging

    structured_logging.configure()


@worker_process_init.connect
def _fresh_connections_after_fork(**_):
    # A forked pool process must not share the parent's PostgreSQL or Redis sockets.
    from shared import db

    db.dispose_engines()


@worker_process_shutdown.connect
def _forget_metrics(pid=None, **_):
    from shared import metrics

    metrics.process_exited(pid)
