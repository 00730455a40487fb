"""The billing pipeline: Celery tasks that cost, record and report usage events.

``celery --app worker`` finds the Celery application here as ``app``.
"""

from worker.celery_app import app

__all__ = ["app"]
