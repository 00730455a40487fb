"""The intake stream (``shared.intake``) as the tests read it: the events queued on it, and
what it still holds (entries, unacknowledged entries, queued status records)."""

from __future__ import annotations

import contextlib

import redis

from shared import intake
from shared.usage_event import AcceptedUsageEvent


def queued_events(broker_url: str) -> list[AcceptedUsageEvent]:
    """Every event on the intake stream, oldest first, as the workers will read them."""
    client = redis.Redis.from_url(broker_url)
    try:
        entries = client.xrange(intake.STREAM)
    finally:
        client.close()
    return [AcceptedUsageEvent.from_message(fields[intake.EVENT_FIELD.encode()]) for _, fields in entries]


def stream_length(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return client.xlen(intake.STREAM)
    finally:
        client.close()



def redis_client(url: str, sentinel=None) -> redis.Redis:
    from worker.task_base import broker_client

    return broker_client(url, sentinel)


def stream_state(broker_url: str, sentinel=None) -> dict[str, int]:
    """What the intake still holds: stream entries, unacknowledged entries, queued records
    (``sentinel``: through the Sentinels, ``shared.config.RedisSentinel``)."""
    client = redis_client(broker_url, sentinel)
    try:
        pending = 0
        with contextlib.suppress(redis.ResponseError):  # no group yet
            pending = client.xpending(intake.STREAM, intake.GROUP)["pending"]
        return {
            "entries": client.xlen(intake.STREAM),
            "pending": pending,
            "queued": sum(1 for _ in client.scan_iter(match=intake.QUEUED_KEY.format(event_id="*"), count=1000)),
        }
    finally:
        client.close()



