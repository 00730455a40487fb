"""The Celery application of the billing pipeline."""

from celery import Celery
from celery.signals import worker_process_init

app = Celery("agent700_billing")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@worker_process_init.connect
def _fresh_connections_after_fork(**_):
    from shared import db

    db.dispose_engines()
