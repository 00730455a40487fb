"""The worker's Celery application: the shared app (``shared.queue``) with the vendor
patches applied, the process lifecycle connected, the pipeline's tasks registered and
their beat schedule collected. ``celery --app worker`` loads it (``worker.app``).

The pieces live in their own modules: the task base in ``worker.task_base``, the
processes' signals and heartbeat in ``worker.process_lifecycle``, beat in
``worker.beat``, each vendor patch in a module named for what it patches."""

from __future__ import annotations

from shared.queue import celery_app as app
from worker import beat, kombu_redis_restore_unacked, process_lifecycle


def _collect_beat_schedule(sender, **_):
    # Every task is registered once the app is finalized, so each entry can name its task.
    sender.conf.beat_schedule = beat.schedule()


kombu_redis_restore_unacked.apply()
process_lifecycle.connect()
app.on_after_finalize.connect(_collect_beat_schedule)
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
if app.finalized:  # finalized before this module ran: the signal has been sent already
    _collect_beat_schedule(app)
