"""The worker's view of the shared Celery application: its tasks and per-process setup."""

from celery.signals import worker_process_init

from shared.queue import celery_app as app

app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@worker_process_init.connect
def _fresh_connections_after_fork(**_):
    # A forked pool process must not share the parent's PostgreSQL or Redis sockets.
    from shared import db

    db.dispose_engines()
