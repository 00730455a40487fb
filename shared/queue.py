"""The Celery application both sides share, the pipeline's task names, and the wake-ups.

The web and the operator commands send tasks by name (they never import the worker);
the worker registers its tasks under the same names. Configured from ``celeryconfig.py``.

Tasks run because events wait, not on a clock. A wake-up sends one task only when none is
pending, so under load wake-ups coalesce and cost nothing:

- the recorder: the accept script sets ``shared.intake.RECORDER_WANTED_KEY`` when an event
  enters an idle intake, and the edge then calls ``wake_recorder``;
- a shard's reporter: whoever commits rows of the shard calls ``wake_reporters``, which
  sets the shard's pending flag (NX) and sends a report task if it was not set.

Both flags expire, so a wake-up lost with a killed worker delays events by seconds, and
the beat sweep (``SWEEP``, every ``SWEEP_SECONDS``) wakes whatever still waits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from celery import Celery

log = logging.getLogger(__name__)

QUEUE = "billing"
RECORD = "billing.record"
REPORT = "billing.report"
SWEEP = "billing.sweep"
STRIPE_EVENT = "billing.stripe_event"
PING = "billing.ping"
SWEEP_SECONDS = 15.0

# A shard's reporter is wanted (rows were committed) and a report task is on its way or
# running; the running reporter renews it and clears it when it stands down.
REPORT_PENDING_KEY = "billing:report-pending:{shard}"
REPORT_PENDING_MS = 10_000

celery_app = Celery("agent700_billing")
celery_app.config_from_object("celeryconfig")
# Beat runs only the safety sweep. A sweep nobody ran in time is dropped rather than
# piled up behind a stopped worker.
celery_app.conf.beat_schedule = {
    "sweep": {"task": SWEEP, "schedule": SWEEP_SECONDS, "options": {"expires": SWEEP_SECONDS - 1}},
}


def send(task_name: str, *args, countdown: float | None = None) -> bool:
    """Send a task, once, without the publisher's retries; False (logged) if the broker
    could not take it. A wake-up that fails is recovered by the sweep; it must never make
    the caller's own work fail."""
    try:
        celery_app.send_task(task_name, args=args, countdown=countdown, retry=False)
        return True
    except Exception as error:  # noqa: BLE001 - kombu raises many kinds; the outcome is the same
        log.warning("could not send %s: %s", task_name, error)
        return False


def wake_recorder() -> bool:
    return send(RECORD)


def wake_reporters(broker: redis.Redis, shards: Iterable[int]) -> list[int]:
    """Send a report task to each shard not already woken; the shards woken."""
    woken = []
    for shard in sorted(set(shards)):
        if broker.set(REPORT_PENDING_KEY.format(shard=shard), 1, nx=True, px=REPORT_PENDING_MS) and send(REPORT, shard):
            woken.append(shard)
    return woken
