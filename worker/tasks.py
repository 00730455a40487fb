"""Celery tasks of the billing pipeline."""

from celery import shared_task


@shared_task(name="billing.ping")
def ping() -> str:
    """A no-op, used to check that a worker consumes (and as the per-task ceiling in bench/)."""
    return "pong"
