"""What waits in the pipeline, counted in events, as ``/metrics`` and Flower's Broker page
show it: events accepted and not yet recorded (the intake stream), and rows recorded and
not yet reported to Stripe; and of both, the events about to be too old for Stripe."""

from __future__ import annotations

import datetime as dt

import redis
import sqlalchemy as sa

from shared import billing_window, intake, models

ACCEPTED_NOT_RECORDED = "billing:intake (accepted, not recorded)"
RECORDED_NOT_REPORTED = "billing:unreported (recorded, not reported)"


def accepted_not_recorded(broker: redis.Redis) -> int:
    return broker.xlen(intake.STREAM)


def recorded_not_reported(connection: sa.Connection) -> int:
    # Served by the partial index on rows with status 'recorded'.
    logs = models.UserBillableRequestLog
    return connection.scalar(sa.select(sa.func.count()).where(logs.status == models.UsageStatus.RECORDED))


# The most intake entries one scrape reads for the ageing-out count. Healthy, no entry
# waits long enough to be read at all; after an outage of the recorder of more than
# 11 h 55 min, the oldest 10,000 are counted (4.5 MB from Redis, 0.11 s to read and
# parse here: 29 ms XRANGE, 81 ms validating), and the count is a lower bound.
AGING_OUT_SCAN_LIMIT = 10_000


def accepted_aging_out(broker: redis.Redis, now: dt.datetime) -> int:
    """Intake entries (accepted, not recorded) whose event will be too old to send to
    Stripe within ``billing_window.AGING_OUT_WARNING``. Only entries that have waited
    ``INTAKE_WAIT_BEFORE_AGING_OUT`` can be (the edge accepts nothing older than
    ``MAX_ACCEPTED_AGE``), so only those are read, the oldest ``AGING_OUT_SCAN_LIMIT``
    of them; an event an operator re-drove (``usage retry`` of a rejected one) is new to
    the intake and is not among them."""
    appended_before = (now - billing_window.INTAKE_WAIT_BEFORE_AGING_OUT).timestamp()
    cutoff = billing_window.aging_out_cutoff(now)
    waiting = intake.events_appended_before(broker, appended_before, AGING_OUT_SCAN_LIMIT)
    return sum(1 for event in waiting if event.occurred_at < cutoff)


def recorded_aging_out(connection: sa.Connection, now: dt.datetime) -> int:
    """Rows recorded, not reported, that will be too old to send to Stripe within
    ``billing_window.AGING_OUT_WARNING`` (those already too old included: the reporter
    fails them as soon as it gets to them)."""
    logs = models.UserBillableRequestLog
    return connection.scalar(
        sa.select(sa.func.count()).where(
            logs.status == models.UsageStatus.RECORDED, logs.occurred_at < billing_window.aging_out_cutoff(now)
        )
    )
