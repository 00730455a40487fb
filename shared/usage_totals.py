"""What an organization used over ``[since, until)``: its events' totals, grouped as asked
(``GROUPS``), each split by how far billing got (``STATES``).

The totals are counted from the log rows, by ``occurred_at``, exactly (``numeric`` sums,
``Decimal`` here): the window's whole UTC hours from their roll-ups (``usage_hourly``,
kept by triggers in the transaction of every insert and move of a row, migration 0008),
its partial first and last hours from the rows themselves. Totals grouped by user are
summed from the rows alone: the roll-ups are not by user (0008 says why). An organization-month of 5 M
rows sums in seconds from the rows, in milliseconds from its roll-ups (BENCHMARKS.md). They cover recorded events, as of the database's time of the answer
(``as_of``): an event accepted and still queued (a second or two, when the pipeline is
healthy) is not in them, because the intake holds events by arrival, not by organization,
and cannot be counted per organization exactly. Its status record says ``queued``.

``stripe_value`` is the sum of the rows' meter values (USD x 10^``STRIPE_VALUE_DECIMALS``,
each row's ``agent700_cost`` rounded once, as Stripe is sent it): the ``billed`` state's
equals what ``stripe reconcile`` finds at Stripe for the same window, when no event of it
was voided by a manual credit (Stripe still counts those; finance credits them).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import orm

from shared import models
from shared.models import UsageStatus

_logs = models.UserBillableRequestLog

# The longest window one answer covers: a calendar month, whichever.
MAX_SPAN = dt.timedelta(days=31)
# What a group may be keyed by, and the SQL of each over the rows (or roll-ups) summed;
# days and hours are UTC.
GROUPS = {
    "model_name": lambda rows: rows.c.model_name,
    "service_name": lambda rows: models.Service.name,
    "source": lambda rows: rows.c.source,
    "user_id": lambda rows: rows.c.user_id,
    "day": lambda rows: sa.func.date_trunc("day", sa.func.timezone("UTC", rows.c.hour)),
    "hour": lambda rows: sa.func.date_trunc("hour", sa.func.timezone("UTC", rows.c.hour)),
}
HOUR = dt.timedelta(hours=1)
_hourly = models.usage_hourly
# The states a group is split into, and the row statuses each holds.
STATES = {
    "billed": UsageStatus.REPORTED,  # Stripe took its meter event
    "pending": UsageStatus.RECORDED,  # recorded, not yet reported
    "failed": UsageStatus.FAILED,
    "voided": UsageStatus.VOIDED,
}
_STATE_OF = {status: state for state, status in STATES.items()}


# Nothing, at the money columns' scale: an empty state reads as a summed one does.
_NO_MONEY = Decimal(0).scaleb(-models.MONEY.scale)


@dataclass
class Figures:
    events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    service_cost: Decimal = _NO_MONEY
    agent700_cost: Decimal = _NO_MONEY
    stripe_value: int = 0

    def add(self, other: Figures) -> None:
        self.events += other.events
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.service_cost += other.service_cost
        self.agent700_cost += other.agent700_cost
        self.stripe_value += other.stripe_value


@dataclass
class Group:
    key: dict[str, object]
    total: Figures = field(default_factory=Figures)
    by_state: dict[str, Figures] = field(default_factory=lambda: {state: Figures() for state in STATES})

    def add(self, state: str, figures: Figures) -> None:
        self.total.add(figures)
        self.by_state[state].add(figures)


@dataclass
class UsageTotals:
    organization_id: uuid.UUID
    since: dt.datetime
    until: dt.datetime
    group_by: list[str]
    as_of: dt.datetime
    total: Group
    groups: list[Group]


class BadWindow(ValueError):
    """The window asked for cannot be answered (the message says why)."""


def check_window(since: dt.datetime, until: dt.datetime) -> None:
    if until <= since:
        raise BadWindow("`to` must be after `from`.")
    if until - since > MAX_SPAN:
        raise BadWindow(f"The window is at most {MAX_SPAN.days} days; ask for a longer one in parts.")


def totals(
    session: orm.Session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime, group_by: Sequence[str] = (),
) -> UsageTotals:
    """The organization's usage in ``[since, until)``, grouped by ``group_by`` (names of
    ``GROUPS``, in that order), groups in the order of their keys."""
    check_window(since, until)
    first_whole, last_whole = _ceil_hour(since), _floor_hour(until)
    if first_whole >= last_whole or "user_id" in group_by:  # the roll-ups are not by user
        return totals_from_rows(session, organization_id, since, until, group_by)
    parts = [_from_roll_ups(organization_id, first_whole, last_whole)]
    for start, end in ((since, first_whole), (last_whole, until)):
        if start < end:
            parts.append(_from_rows(organization_id, start, end))
    return _totals(session, organization_id, since, until, group_by, parts)


def totals_from_rows(
    session: orm.Session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime, group_by: Sequence[str] = (),
) -> UsageTotals:
    """``totals`` summed from the log rows alone: what the roll-ups must always equal
    (the tests check it after every move; the benchmark times both)."""
    check_window(since, until)
    by_user = "user_id" in group_by
    return _totals(session, organization_id, since, until, group_by, [_from_rows(organization_id, since, until, by_user)])


def _from_rows(organization_id: uuid.UUID, start: dt.datetime, end: dt.datetime, by_user: bool = False) -> sa.Select:
    """The rows of [start, end) summed as the roll-ups are: by hour, model, service,
    source and status (and ``by_user``, which the roll-ups are not)."""
    hour = sa.func.date_trunc("hour", _logs.occurred_at, "UTC")
    keys = [hour.label("hour"), _logs.model_name, _logs.service_id, _logs.source, _logs.status]
    if by_user:
        keys.append(_logs.user_id)
    return (
        sa.select(
            *keys, sa.func.count().label("events"), sa.func.sum(_logs.input_tokens).label("input_tokens"),
            sa.func.sum(_logs.output_tokens).label("output_tokens"), sa.func.sum(_logs.service_cost).label("service_cost"),
            sa.func.sum(_logs.agent700_cost).label("agent700_cost"), sa.func.sum(_logs.stripe_value).label("stripe_value"),
        )
        .where(_logs.organization_id == organization_id, _logs.occurred_at >= start, _logs.occurred_at < end)
        .group_by(*keys)
    )


def _from_roll_ups(organization_id: uuid.UUID, start: dt.datetime, end: dt.datetime) -> sa.Select:
    """The roll-ups of the whole hours in [start, end); a key whose rows all moved to
    another state keeps a roll-up of zero events, which is no group."""
    c = _hourly.c
    return sa.select(
        c.hour, c.model_name, c.service_id, c.source, c.status, c.events, c.input_tokens, c.output_tokens,
        c.service_cost, c.agent700_cost, c.stripe_value,
    ).where(c.organization_id == organization_id, c.hour >= start, c.hour < end, c.events != 0)


def _totals(
    session: orm.Session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime, group_by: Sequence[str],
    parts: list[sa.Select],
) -> UsageTotals:
    """The totals of the hour sums of ``parts`` (``_from_rows``, ``_from_roll_ups``), grouped."""
    group_by = list(dict.fromkeys(group_by))
    rows = sa.union_all(*parts).subquery("summed") if len(parts) > 1 else parts[0].subquery("summed")
    keys = [GROUPS[name](rows).label(name) for name in group_by]
    query = (
        sa.select(
            *keys, rows.c.status, sa.func.sum(rows.c.events).label("events"),
            sa.func.sum(rows.c.input_tokens).label("input_tokens"), sa.func.sum(rows.c.output_tokens).label("output_tokens"),
            sa.func.sum(rows.c.service_cost).label("service_cost"), sa.func.sum(rows.c.agent700_cost).label("agent700_cost"),
            sa.func.sum(rows.c.stripe_value).label("stripe_value"),
        )
        .select_from(rows)
        .group_by(*keys, rows.c.status)
        .order_by(*keys)
    )
    if "service_name" in group_by:
        query = query.outerjoin(models.Service, models.Service.id == rows.c.service_id)
    as_of = session.scalar(sa.select(sa.func.now()))
    total, groups = Group({}), {}
    for row in session.execute(query):
        key = tuple(_key_value(name, getattr(row, name)) for name in group_by)
        figures = Figures(
            int(row.events), int(row.input_tokens), int(row.output_tokens), Decimal(row.service_cost),
            Decimal(row.agent700_cost), int(row.stripe_value),
        )
        state = _STATE_OF[row.status]
        groups.setdefault(key, Group(dict(zip(group_by, key, strict=True)))).add(state, figures)
        total.add(state, figures)
    return UsageTotals(organization_id, since, until, group_by, as_of, total, list(groups.values()))


def _floor_hour(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: dt.datetime) -> dt.datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def _key_value(name: str, value):
    if name in ("day", "hour"):
        return value.replace(tzinfo=dt.UTC)  # date_trunc of a UTC wall time
    return value
