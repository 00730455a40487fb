"""What waits in the pipeline, counted in events, as ``/metrics`` and Flower's Broker page
show it: events accepted and not yet recorded (the intake stream), and rows recorded and
not yet reported to Stripe."""

from __future__ import annotations

import redis
import sqlalchemy as sa

from shared import intake, models

ACCEPTED_NOT_RECORDED = "billing:intake (accepted, not recorded)"
RECORDED_NOT_REPORTED = "billing:unreported (recorded, not reported)"


def accepted_not_recorded(broker: redis.Redis) -> int:
    return broker.xlen(intake.STREAM)


def recorded_not_reported(connection: sa.Connection) -> int:
    # Served by the partial index on rows with status 'recorded'.
    logs = models.UserBillableRequestLog
    return connection.scalar(sa.select(sa.func.count()).where(logs.status == models.UsageStatus.RECORDED))
