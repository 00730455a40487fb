"""What the workers tell operators through Redis, for ``/metrics`` to show: which workers
are alive, when one last read the intake, and whether Stripe's meter can take events.

Each worker's main process says it is alive every ``HEARTBEAT_SECONDS`` (a sorted set of
hostnames by time); a worker not heard of for ``ALIVE_WITHIN_SECONDS`` is gone. Every
record task notes when it read the intake. Together they tell "no worker" from "nothing
to do": with events waiting, a last read that keeps ageing means nobody is recording.
The reporters note what they last found of the billing meter (``meter_checked``).
"""

from __future__ import annotations

import json

import redis

WORKERS_KEY = "billing:workers"
INTAKE_LAST_READ_KEY = "billing:intake-last-read"
HEARTBEAT_SECONDS = 5
ALIVE_WITHIN_SECONDS = 15
# Workers not heard of for an hour are forgotten, so the set stays small.
FORGET_AFTER_SECONDS = 3600


def worker_alive(broker: redis.Redis, hostname: str, now: float) -> None:
    with broker.pipeline(transaction=False) as pipe:
        pipe.zadd(WORKERS_KEY, {hostname: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()


def worker_gone(broker: redis.Redis, hostname: str) -> None:
    broker.zrem(WORKERS_KEY, hostname)


def intake_read(broker: redis.Redis, now: float) -> None:
    broker.set(INTAKE_LAST_READ_KEY, repr(now))


def workers_alive(broker: redis.Redis, now: float) -> int:
    return broker.zcount(WORKERS_KEY, now - ALIVE_WITHIN_SECONDS, "+inf")


def intake_last_read_age(broker: redis.Redis, now: float) -> float | None:
    """Seconds since a worker last read the intake; None if none ever did."""
    last = broker.get(INTAKE_LAST_READ_KEY)
    return None if last is None else max(0.0, now - float(last))


SWEEP_KEY = "billing:last-sweep"


def swept(broker: redis.Redis, now: float) -> None:
    broker.set(SWEEP_KEY, repr(now))


def last_sweep_age(broker: redis.Redis, now: float) -> float | None:
    """Seconds since the beat sweep last ran; None if it never did. Beat runs it every
    15 s: an age far beyond means beat (or every worker) is gone."""
    last = broker.get(SWEEP_KEY)
    return None if last is None else max(0.0, now - float(last))


METER_KEY = "billing:stripe-meter"
# A finding older than this says nothing any more (no reporter has looked lately).
METER_FINDING_SECONDS = 300


def meter_checked(broker: redis.Redis, problem: str | None, now: float) -> None:
    """A reporter's finding: None if the meter can count events, else why it cannot."""
    broker.set(METER_KEY, json.dumps({"problem": problem, "checked_at": now}), ex=METER_FINDING_SECONDS)


def meter_problem(broker: redis.Redis) -> tuple[bool, str | None]:
    """(whether a reporter looked lately, the problem it found or None)."""
    finding = broker.get(METER_KEY)
    if finding is None:
        return False, None
    return True, json.loads(finding)["problem"]
