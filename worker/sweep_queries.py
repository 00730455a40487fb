"""What the beat sweep looks for: work a killed worker or a lost wake-up left waiting.

The sweep task (``worker.tasks.sweep``) flags rows too old to resend
(``shared.usage_rows.flag_for_reconciliation``), wakes the shards whose recorded rows
wait with no reporter on the way, and sends again the Stripe events whose task was lost.
These are its queries.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy import orm

from shared import models, usage_voids
from worker.reporting import shard_of

_logs = models.UserBillableRequestLog


def shards_waiting(session: orm.Session, older_than: dt.timedelta) -> set[int]:
    """Shards holding rows recorded but not reported for longer than ``older_than``."""
    organizations = session.scalars(
        # select().distinct(), not distinct(column): the latter is SQLAlchemy's unary
        # DISTINCT, meant for aggregates, and warns on every sweep.
        sa.select(_logs.organization_id)
        .distinct()
        .where(_logs.status == models.UsageStatus.RECORDED, _logs.recorded_at < sa.func.now() - older_than)
    )
    return {shard_of(organization) for organization in organizations}


def shards_with_voids_due(session: orm.Session) -> set[int]:
    """Shards with a void whose Stripe call is due (a reporter's round does it)."""
    organizations = session.scalars(
        sa.select(_logs.organization_id).distinct().where(_logs.id.in_(usage_voids.due_of()))
    )
    return {shard_of(organization) for organization in organizations}


def stripe_events_unhandled(session: orm.Session, older_than: dt.timedelta) -> list[str]:
    """Stripe events received and not yet handled after this long: their task may be lost
    (the sweep re-sends those whose chain holds no lease)."""
    return list(
        session.scalars(
            sa.select(models.StripeEvent.id).where(
                models.StripeEvent.handled_at.is_(None), models.StripeEvent.received_at < sa.func.now() - older_than
            )
        )
    )
