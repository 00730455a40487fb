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

A Stripe event's task chain (``STRIPE_EVENT``, and its retries) holds a lease on the event
(``start_stripe_event``, ``hold_stripe_event_lease``): the webhook and the sweep start a
chain only when no lease is held, so there is at most one per event, and the sweep re-sends
only an event whose chain is truly gone (its lease ran out).
"""

from __future__ import annotations

import logging
import uuid
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

# Organizations are split into this many report shards (``worker.reporting``), by the last
# byte of their id: ``shard_of``.
REPORT_SHARDS = 8


def shard_of(organization_id: uuid.UUID) -> int:
    """The organization's report shard: the last byte of its id, modulo ``REPORT_SHARDS``."""
    return organization_id.bytes[15] % REPORT_SHARDS


# A shard's reporter is wanted (rows were committed) and a report task is on its way or
# running; the running reporter renews it and clears it when it stands down.
REPORT_PENDING_KEY = "billing:report-pending:{shard}"
REPORT_PENDING_MS = 10_000

# The lease of a Stripe event's task chain: the chain's token. Taken when the chain is sent,
# renewed by each of its tasks for as long as the task may run or wait for its retry.
STRIPE_EVENT_LEASE_KEY = "billing:stripe-event-lease:{event_id}"
# A task's time limit (120 s) and a minute in the queue: a lease outlives its live chain.
STRIPE_EVENT_LEASE_MS = 180_000
# Renew the lease if it is this chain's or nobody's (it ran out: the chain goes on); 0 if
# another chain holds it.
_HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

celery_app = Celery("agent700_billing")
celery_app.config_from_object("celeryconfig")


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


def start_stripe_event(broker: redis.Redis, event_id: str) -> bool:
    """Send the event's task with a new chain's lease, unless a chain holds one; True if
    sent. If Redis fails, nothing is sent (logged): the sweep starts the chain later."""
    lease = uuid.uuid4().hex
    try:
        if not broker.set(STRIPE_EVENT_LEASE_KEY.format(event_id=event_id), lease, nx=True, px=STRIPE_EVENT_LEASE_MS):
            return False
    except redis.RedisError as error:
        log.warning("could not start the task of Stripe event %s: %s", event_id, error)
        return False
    return send(STRIPE_EVENT, event_id, lease)


def hold_stripe_event_lease(broker: redis.Redis, event_id: str, lease: str, milliseconds: int) -> bool:
    """Keep the event's lease for this chain ``milliseconds`` more; False if another chain
    holds it (this one must stop)."""
    key = STRIPE_EVENT_LEASE_KEY.format(event_id=event_id)
    return bool(broker.eval(_HOLD_LEASE, 1, key, lease, int(milliseconds)))
