"""The intake queue between the edge and the billing pipeline: a Redis stream.

The edge appends each accepted event to one stream (atomically with its idempotency
claim and its "queued" status record, in one Lua script, so a failed publish leaves
nothing behind). Celery workers read it through a consumer group in batches; an entry
stays pending until the row it produced is committed, so a worker killed mid-batch
loses nothing: another worker claims the entry after ``CLAIM_IDLE_MS``. Recording is
idempotent, so a slow worker's entry claimed by another is still billed once.
"""

STREAM = "billing:intake"
GROUP = "billing-recorders"
EVENT_FIELD = "event"
# The status record an accepted-but-not-yet-recorded event is read from (GET .../{id}).
QUEUED_KEY = "billing:queued:{event_id}"
QUEUED_TTL_SECONDS = 7 * 24 * 3600
# How long an entry may sit unacknowledged with a consumer before another may take it.
CLAIM_IDLE_MS = 10_000
