"""``stripe reconcile``: what the database says was reported, against what Stripe counted.

The database side is the sum of ``stripe_value`` over the organization's rows with status
``reported`` whose ``occurred_at`` is in the window; the Stripe side is the meter event
summaries of the meter for ``STRIPE_METER_EVENT_NAME`` and the organization's Stripe
customer (a meter event's timestamp is its row's ``occurred_at``). Both are in the meter's
unit: USD × 10^``STRIPE_VALUE_DECIMALS``.

Stripe summarizes on minute boundaries, and by day only on whole UTC days, so the window
is compared day by day: whole days in one ``value_grouping_window=day`` request, a partial
first or last day in a request of its own. The total is the sum of the days.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import click
import sqlalchemy as sa
import stripe
from flask.cli import AppGroup

from ingest_api.cli import parameters, store
from shared import models
from shared.reconciliation import RECONCILE_ERROR
from shared.stripe_client import stripe_client

stripe_cli = AppGroup("stripe", help="Stripe Billing: check what was reported against what Stripe counted.")

# Exit codes, as diff(1) has them: 0 equal, 1 different, 2 the comparison could not be made.
EXIT_MATCH, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
PAGE_SIZE = 100
_logs = models.UserBillableRequestLog


@dataclass(frozen=True)
class DayTotals:
    day: dt.date
    start: dt.datetime  # the part of the day inside the window: [start, end)
    end: dt.datetime
    database: int = 0
    stripe: Decimal = Decimal(0)

    @property
    def difference(self) -> Decimal:
        return self.database - self.stripe


@stripe_cli.command("reconcile")
@click.option("--org", "organization_id", required=True, type=click.UUID, help="The organization's id.")
@click.option("--since", required=True, type=parameters.RFC3339_TIME,
              help="Start of the window (inclusive), RFC 3339 on a minute boundary, e.g. 2025-01-01T00:00:00Z.")
@click.option("--until", type=parameters.RFC3339_TIME,
              help="End of the window (exclusive), on a minute boundary  [default: now, to the minute].")
def reconcile(organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime | None) -> None:
    """Compare an organization's reported total with Stripe's meter event summaries.

    Sums the meter values of the organization's rows reported to Stripe whose usage
    occurred in [--since, --until), asks Stripe for the same window and customer, and
    prints both totals, their difference and every UTC day on which they differ. Rows
    not reported yet (recorded, failed) are counted but not compared.

    Exit status: 0 when the totals match (last line MATCH), 1 when they differ (last line
    DIFFERENT by N, N = database minus Stripe, in meter units), 2 when the comparison
    could not be made. Stripe's summaries may lag new events by a few minutes.
    """
    with _exit_code(EXIT_ERROR):
        since, until = _window(since, until)
        settings = store.current_settings()
        with store.operator_transaction() as session:
            organization = store.organization_by_id(session, organization_id)
            if not organization.stripe_customer_id:
                raise click.ClickException(
                    f"Organization {organization_id} has no Stripe customer id; nothing of it can be at Stripe."
                )
            days = _days(since, until)
            database_days = _database_days(session, organization_id, since, until)
            pending = _pending_counts(session, organization_id, since, until)
        client = stripe_client(settings)
        meter = _meter(client, settings.stripe_meter_event_name)
        stripe_days = _stripe_days(client, meter.id, organization.stripe_customer_id, days)

    days = [
        DayTotals(day.day, day.start, day.end, database_days.get(day.day, 0), stripe_days.get(day.day, Decimal(0)))
        for day in days
    ]
    database_total = sum(day.database for day in days)
    stripe_total = sum((day.stripe for day in days), Decimal(0))
    difference = database_total - stripe_total
    decimals = settings.stripe_value_decimals

    click.echo(
        f"Organization {organization.id} ({organization.name}), Stripe customer {organization.stripe_customer_id}, "
        f"meter {meter.id} ({settings.stripe_meter_event_name})"
    )
    click.echo(f"Window: {_time(since)} to {_time(until)} (occurred_at; meter unit = USD x 10^{decimals})")
    click.echo(f"Database total (reported): {_number(database_total)} ({_usd(database_total, decimals)} USD)")
    click.echo(f"Stripe total:              {_number(stripe_total)} ({_usd(stripe_total, decimals)} USD)")
    click.echo(f"Difference (database - Stripe): {_number(difference)}")
    click.echo(
        f"Not compared: {pending['recorded']} row(s) still recorded (not yet reported), {pending['failed']} failed "
        f"({pending['unreconciled']} of them flagged for reconciliation)."
    )
    differing = [day for day in days if day.difference]
    if differing:
        click.echo("Days that differ (UTC):")
        header = ("DAY", "DATABASE", "STRIPE", "DIFFERENCE")
        rows = [(str(d.day), _number(d.database), _number(d.stripe), _number(d.difference)) for d in differing]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            click.echo("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))))
    if difference == 0 and not differing:
        click.echo("MATCH")
        return
    click.echo(f"DIFFERENT by {_number(difference)}")
    click.get_current_context().exit(EXIT_DIFFERENT)


@contextlib.contextmanager
def _exit_code(code: int) -> Iterator[None]:
    """Errors exit with ``code``, keeping 1 for "they differ"."""
    try:
        yield
    except click.ClickException as error:
        if not isinstance(error, click.UsageError):
            error.exit_code = code
        raise


def _window(since: dt.datetime, until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    since = since.astimezone(dt.UTC)
    if until is None:
        now = dt.datetime.now(dt.UTC)
        until = now.replace(second=0, microsecond=0)
    until = until.astimezone(dt.UTC)
    for name, value in (("--since", since), ("--until", until)):
        if value.second or value.microsecond:
            raise click.BadParameter(
                f"{_time(value)} is not on a minute boundary; Stripe summarizes meter events by the minute.",
                param_hint=f"'{name}'",
            )
    if until <= since:
        raise click.BadParameter(f"must be after --since ({_time(since)}).", param_hint="'--until'")
    return since, until


def _days(since: dt.datetime, until: dt.datetime) -> list[DayTotals]:
    """The window cut at UTC midnights."""
    days = []
    start = since
    while start < until:
        midnight = dt.datetime.combine(start.date(), dt.time(), tzinfo=dt.UTC)
        end = min(until, midnight + DAY)
        days.append(DayTotals(start.date(), start, end))
        start = end
    return days


def _database_days(session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime) -> dict[dt.date, int]:
    day = sa.func.date(sa.func.timezone("UTC", _logs.occurred_at))
    rows = session.execute(
        sa.select(day.label("day"), sa.func.sum(_logs.stripe_value).label("total"))
        .where(
            _logs.organization_id == organization_id,
            _logs.status == models.UsageStatus.REPORTED,
            _logs.occurred_at >= since,
            _logs.occurred_at < until,
        )
        .group_by(day)
    )
    return {row.day: int(row.total) for row in rows}


def _pending_counts(session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime) -> dict[str, int]:
    row = session.execute(
        sa.select(
            sa.func.count().filter(_logs.status == models.UsageStatus.RECORDED).label("recorded"),
            sa.func.count().filter(_logs.status == models.UsageStatus.FAILED).label("failed"),
            sa.func.count()
            .filter(_logs.status == models.UsageStatus.FAILED, _logs.error == RECONCILE_ERROR)
            .label("unreconciled"),
        ).where(_logs.organization_id == organization_id, _logs.occurred_at >= since, _logs.occurred_at < until)
    ).one()
    return row._asdict()


def _meter(client: stripe.StripeClient, event_name: str):
    """The meter counting ``event_name``: the active one, else an inactive one (its history)."""
    try:
        meters = [m for m in client.v1.billing.meters.list({"limit": PAGE_SIZE}).auto_paging_iter()
                  if m.event_name == event_name]
    except stripe.StripeError as error:
        raise _stripe_failed(error) from None
    if not meters:
        raise click.ClickException(f"Stripe has no billing meter for event name {event_name!r}.")
    return next((m for m in meters if m.status == "active"), meters[0])


def _stripe_days(client: stripe.StripeClient, meter_id: str, customer: str, days: list[DayTotals]) -> dict[dt.date, Decimal]:
    totals: dict[dt.date, Decimal] = {}
    whole = [day for day in days if day.end - day.start == DAY]
    try:
        if whole:
            # Whole days are contiguous (only the first and last day can be partial).
            for summary in _summaries(client, meter_id, customer, whole[0].start, whole[-1].end, by_day=True):
                day = dt.datetime.fromtimestamp(summary.start_time, dt.UTC).date()
                totals[day] = totals.get(day, Decimal(0)) + _value(summary)
        for day in days:
            if day.end - day.start != DAY:
                totals[day.day] = sum((_value(s) for s in _summaries(client, meter_id, customer, day.start, day.end)),
                                      Decimal(0))
    except stripe.StripeError as error:
        raise _stripe_failed(error) from None
    return totals


def _summaries(client, meter_id: str, customer: str, start: dt.datetime, end: dt.datetime, *, by_day: bool = False):
    params = {
        "customer": customer,
        "start_time": int(start.timestamp()),
        "end_time": int(end.timestamp()),
        "limit": PAGE_SIZE,
    }
    if by_day:
        params["value_grouping_window"] = "day"
    return client.v1.billing.meters.event_summaries.list(meter_id, params).auto_paging_iter()


def _value(summary) -> Decimal:
    # A JSON number (a float in the SDK): via its text, so no binary fraction creeps in.
    return Decimal(str(summary.aggregated_value))


def _stripe_failed(error: stripe.StripeError) -> click.ClickException:
    if isinstance(error, stripe.APIConnectionError):
        return click.ClickException(f"Stripe could not be reached: {error.user_message or error}")
    return click.ClickException(f"Stripe refused the request ({error.http_status}): {error.user_message or error}")


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _number(value: int | Decimal) -> str:
    value = Decimal(value)
    return str(value.quantize(Decimal(1))) if value == value.to_integral_value() else str(value.normalize())


def _usd(value: int | Decimal, decimals: int) -> str:
    return str(Decimal(value).scaleb(-decimals).quantize(Decimal(1).scaleb(-decimals)))

