"""The Celery application both sides share: the web sends tasks by name, the worker runs them.

Configured from ``celeryconfig.py``. Task names live here so the web never imports the
worker package.
"""

from celery import Celery

DRAIN_INTAKE = "billing.drain_intake"
REPORT_SHARD = "billing.report_shard"
SWEEP_UNREPORTED = "billing.sweep_unreported"
RETRY_FAILED = "billing.retry_failed"

celery_app = Celery("agent700_billing")
celery_app.config_from_object("celeryconfig")
