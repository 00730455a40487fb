"""Celery settings for the billing pipeline. Each one says why it is set.

The broker URL (``CELERY_BROKER_URL``) and the var directory come from shared.config,
like every setting: nothing here reads the environment itself.
"""

from shared.config import get_settings, var_dir
from shared.redis_connection import celery_transport_options

# One Redis URL, or kombu's ``sentinel://`` list of the Sentinels (REDIS_SENTINELS): then
# the transport asks them for the primary on every (re)connection and follows a failover.
broker_url = get_settings().broker_url

# A task is acknowledged only after it finished, and a task whose worker process died is
# handed back to the broker: a killed worker must never lose an event.
task_acks_late = True
task_reject_on_worker_lost = True
# Each worker process reserves one message at a time, so a crash strands at most one and
# an idle worker is never starved by a busy one's reservations.
worker_prefetch_multiplier = 1

broker_transport_options = {
    # Redis re-delivers an unacknowledged message after this many seconds. It must be
    # longer than any task runs or waits (we never schedule long countdowns in Redis;
    # retries are short, and the beat sweeper re-drives anything older), else a slow
    # task would be delivered twice while still running.
    "visibility_timeout": 3600,
    # Bounded waits on a broken broker: fail and reconnect rather than hang forever.
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
    # With Sentinels: the primary's name, and their password.
    **celery_transport_options(get_settings()),
}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep reconnecting while Redis restarts

task_serializer = "json"
accept_content = ["json"]
# Nothing reads task results; the database is the record of what happened.
task_ignore_result = True
task_default_queue = "billing"
worker_send_task_events = True  # Flower shows tasks live
task_send_sent_event = True
timezone = "UTC"

# Each periodic task declares its beat entry beside its definition (worker.tasks, with
# worker.beat.every); the worker's app collects them (worker.celery_app).
# Beat keeps its state in the var directory, not the current one, so it starts from any
# directory; its scheduler makes that directory when missing (``--schedule`` overrides).
beat_schedule_filename = str(var_dir() / "celerybeat-schedule")
beat_scheduler = "worker.beat:BeatScheduler"
