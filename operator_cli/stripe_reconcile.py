"""``stripe reconcile``: what the database says was reported, against what Stripe counted,
and which rows make the difference.

The database side is the sum of ``stripe_value`` over the organization's rows Stripe should
count (``usage_voids.billed_at_stripe``: reported, or voided by a manual credit, which
leaves Stripe as it was) whose ``occurred_at`` is in the window; the Stripe side is the meter event
summaries of the meter for ``STRIPE_METER_EVENT_NAME`` and the organization's Stripe
customer (a meter event's timestamp is its row's ``occurred_at``). Both are in the meter's
unit: USD × 10^``STRIPE_VALUE_DECIMALS``.

Stripe summarizes on minute boundaries, by hour only on whole UTC hours and by day only
on whole UTC days, so the window is compared day by day: whole days in one
``value_grouping_window=day`` request, a partial first or last day in a request of its
own. The total is the sum of the days. Each differing day is cut into hours the same way
(``value_grouping_window=hour``), and each differing hour into minutes: one request per
minute holding reported rows, whose rows are then listed. What Stripe counts in the
hour's other minutes is found by halving those minutes' ranges, one request per cut
(meter values are never negative, so a range that sums to 0 holds nothing). A void's
negative event is the one negative value: it has its row's ``occurred_at``, so it nets
its row out within the minute, and ranges of whole minutes stay as if neither were sent.

Stripe has no API to list meter events: a row Stripe lacks can be named, because the
database lists the minute's rows; an event at Stripe the database does not have as
reported can only be shown as the minute where Stripe counts more.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import click
import sqlalchemy as sa
import stripe
from flask.cli import AppGroup
from sqlalchemy import orm

from operator_cli import output, parameters, store, stripe_setup
from shared import models, stripe_meter, usage_rows, usage_voids
from shared.stripe_client import stripe_client

stripe_cli = AppGroup(
    "stripe", help="Stripe Billing: set up the billing meter, and check what was reported against what Stripe counted."
)
stripe_cli.add_command(stripe_setup.ensure_meter)

# Exit codes, as diff(1) has them: 0 equal, 1 different, 2 the comparison could not be made.
EXIT_MATCH, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
_GROUPING = {DAY: "day", HOUR: "hour"}
# Summary requests the drill-down below the day totals may make, so a long outage (a
# whole month missing at Stripe) ends in a narrower-window hint, not hours of requests.
MAX_DRILL_DOWN_REQUESTS = 300
# Stripe's summaries lag new events by a few minutes: differences this recent may vanish.
SUMMARY_LAG = dt.timedelta(minutes=5)
_logs = models.UserBillableRequestLog


@dataclass(frozen=True)
class Period:
    """The totals of one day, hour or minute inside the window: [start, end)."""

    start: dt.datetime
    end: dt.datetime
    database: int = 0
    stripe: Decimal = Decimal(0)

    @property
    def difference(self) -> Decimal:
        return self.database - self.stripe


@dataclass
class Minute:
    """A minute that differs, with its reported rows and what they tell."""

    period: Period
    rows: Sequence = ()  # its reported rows (id, occurred_at, stripe_value)
    missing: Sequence = ()  # the rows Stripe lacks, when that is certain
    candidates: Sequence = ()  # the rows one or more of which Stripe lacks, when it is not
    unreported: Sequence = ()  # where Stripe counts more: the minute's rows not marked reported

    @property
    def finding(self) -> str:
        if self.period.difference < 0:
            unreported = f"; {len(self.unreported)} row(s) here not reported" if self.unreported else ""
            return f"Stripe counts more{unreported}"
        if self.missing:
            return f"missing at Stripe: {len(self.missing)} row(s)"
        return f"candidates: {len(self.candidates)} row(s)"


@dataclass
class Findings:
    hours: list[Period] = field(default_factory=list)
    minutes: list[Minute] = field(default_factory=list)
    stopped: str | None = None  # why the drill-down ended early


@stripe_cli.command("reconcile")
@parameters.organization_option()
@click.option("--since", required=True, type=parameters.RFC3339_TIME,
              help="Start of the window (inclusive), RFC 3339 on a minute boundary, e.g. 2025-01-01T00:00:00Z.")
@click.option("--until", type=parameters.RFC3339_TIME,
              help="End of the window (exclusive), on a minute boundary  [default: now, to the minute].")
def reconcile(organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime | None) -> None:
    """Compare an organization's reported total with Stripe's meter event summaries.

    Sums the meter values of the organization's rows reported to Stripe whose usage
    occurred in [--since, --until), asks Stripe for the same window and customer, and
    prints both totals, their difference and every UTC day on which they differ. Rows
    not reported yet (recorded, failed) and voided rows are counted but not compared; a
    row voided by a manual credit is compared (Stripe still counts it; finance credits
    it), and one voided by a cancel or a negative event is not (Stripe nets it out).

    Each differing day is followed down to its hours and minutes: rows of a minute are
    named "missing at Stripe" when Stripe counts nothing there or lacks exactly one
    row's value, else listed as candidates; minutes where Stripe counts more are listed
    (Stripe cannot list its events, so they cannot be named). The report ends with the
    `usage retry --id ... --force` command for the missing rows. Differences that cancel
    out within one day are not seen.

    Exit status: 0 when the totals match (last line MATCH), 1 when they differ (last line
    DIFFERENT by N, N = database minus Stripe, in meter units), 2 when the comparison
    could not be made. Stripe's summaries may lag new events by a few minutes.
    """
    with _exit_code(EXIT_ERROR):
        comparison = _compare_days(organization_id, since, until)
    _print_totals(comparison)
    differing = [day for day in comparison.days if day.difference]
    if differing:
        click.echo("Days that differ (UTC):")
        _print_periods("DAY", differing, lambda day: str(day.start.date()))
        _print_findings(_drill_down(organization_id, comparison.summaries, differing))
    if comparison.difference == 0 and not differing:
        click.echo("MATCH")
        return
    click.echo(f"DIFFERENT by {_number(comparison.difference)}")
    click.get_current_context().exit(EXIT_DIFFERENT)


@dataclass
class Comparison:
    """The window's day totals on both sides, and what was left out of them."""

    organization: models.Organization
    meter: object
    event_name: str
    decimals: int
    since: dt.datetime
    until: dt.datetime
    days: list[Period]
    pending: dict[str, int]  # rows not compared: recorded, failed, of them unreconciled
    left_out: int | None  # rows after an --until not given (None when it was)
    summaries: Summaries

    @property
    def database_total(self) -> int:
        return sum(day.database for day in self.days)

    @property
    def stripe_total(self) -> Decimal:
        return sum((day.stripe for day in self.days), Decimal(0))

    @property
    def difference(self) -> Decimal:
        return self.database_total - self.stripe_total


def _compare_days(organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime | None) -> Comparison:
    until_given = until is not None
    since, until = _window(since, until)
    settings = store.current_settings()
    with store.operator_transaction() as session:
        organization = store.organization_by_id(session, organization_id)
        if not organization.stripe_customer_id:
            raise click.ClickException(
                f"Organization {organization_id} has no Stripe customer id; nothing of it can be at Stripe."
            )
        database_days = _database_totals(session, organization_id, since, until, "day")
        pending = _pending_counts(session, organization_id, since, until)
        left_out = None if until_given else _rows_from(session, organization_id, until)
    client = stripe_client(settings)
    meter = _meter(client, settings.stripe_meter_event_name)
    summaries = Summaries(client, meter.id, organization.stripe_customer_id)
    pieces = _pieces(since, until, DAY)
    stripe_days = summaries.by(pieces, DAY)
    days = [Period(start, end, database_days.get(start, 0), stripe_days.get(start, Decimal(0))) for start, end in pieces]
    return Comparison(
        organization, meter, settings.stripe_meter_event_name, settings.stripe_value_decimals, since, until, days,
        pending, left_out, summaries,
    )


def _print_totals(comparison: Comparison) -> None:
    organization, decimals, until = comparison.organization, comparison.decimals, comparison.until
    click.echo(
        f"Organization {organization.id} ({organization.name}), Stripe customer {organization.stripe_customer_id}, "
        f"meter {comparison.meter.id} ({comparison.event_name})"
    )
    click.echo(
        f"Window compared: occurred_at from {_time(comparison.since)} (inclusive) to {_time(until)} (exclusive); "
        f"meter unit = USD x 10^{decimals}"
    )
    if comparison.left_out is not None:
        newest = (
            f"{comparison.left_out} row(s) of this organization occurred at or after it and are left out (give a later "
            "--until once Stripe has them)" if comparison.left_out else "no row of this organization occurred after it"
        )
        click.echo(f"--until was not given: it is the start of the current minute, {_time(until)}; {newest}.")
    database_total, stripe_total = comparison.database_total, comparison.stripe_total
    click.echo(f"Database total (reported): {_number(database_total)} ({_usd(database_total, decimals)} USD)")
    click.echo(f"Stripe total:              {_number(stripe_total)} ({_usd(stripe_total, decimals)} USD)")
    click.echo(f"Difference (database - Stripe): {_number(comparison.difference)}")
    pending = comparison.pending
    click.echo(
        f"Not compared: {pending['recorded']} row(s) still recorded (not yet reported), {pending['failed']} failed "
        f"({pending['unreconciled']} of them flagged for reconciliation), {pending['voided']} voided (nothing of them "
        "billed at Stripe)."
    )


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


def _floor(value: dt.datetime, unit: dt.timedelta) -> dt.datetime:
    """The start of the UTC day, hour or minute holding ``value`` (as Stripe cuts them)."""
    seconds, step = int(value.timestamp()), int(unit.total_seconds())
    return dt.datetime.fromtimestamp(seconds - seconds % step, dt.UTC)


def _pieces(start: dt.datetime, end: dt.datetime, unit: dt.timedelta) -> list[tuple[dt.datetime, dt.datetime]]:
    """[start, end) cut at UTC ``unit`` boundaries (midnights, whole hours)."""
    pieces = []
    while start < end:
        piece_end = min(end, _floor(start, unit) + unit)
        pieces.append((start, piece_end))
        start = piece_end
    return pieces


# --- the database side -------------------------------------------------------------------


def _database_totals(
    session: orm.Session, organization_id: uuid.UUID, start: dt.datetime, end: dt.datetime, unit: str
) -> dict[dt.datetime, int]:
    """Reported totals per UTC ``unit`` ("day", "hour"), keyed as ``_pieces`` cuts [start, end)."""
    bucket = sa.func.date_trunc(unit, sa.func.timezone("UTC", _logs.occurred_at))
    rows = session.execute(
        sa.select(bucket.label("bucket"), sa.func.sum(_logs.stripe_value).label("total"))
        .where(*_reported_in(organization_id, start, end))
        .group_by(bucket)
    )
    return {max(start, row.bucket.replace(tzinfo=dt.UTC)): int(row.total) for row in rows}


def _reported_in(organization_id: uuid.UUID, start: dt.datetime, end: dt.datetime) -> list:
    return [
        _logs.organization_id == organization_id,
        usage_voids.billed_at_stripe(),
        _logs.occurred_at >= start,
        _logs.occurred_at < end,
    ]


def _rows_in(organization_id: uuid.UUID, start: dt.datetime, end: dt.datetime, *, reported: bool):
    """The organization's rows (billed at Stripe, or not) of [start, end), oldest first,
    each with its void's method (None without one)."""
    status = usage_voids.billed_at_stripe()
    with store.operator_transaction() as session:
        return session.execute(
            sa.select(_logs.id, _logs.occurred_at, _logs.stripe_value, _logs.status, models.UsageVoid.method.label("void"))
            .outerjoin(models.UsageVoid, models.UsageVoid.row_id == _logs.id)
            .where(
                _logs.organization_id == organization_id,
                status if reported else ~status,
                _logs.occurred_at >= start,
                _logs.occurred_at < end,
            )
            .order_by(_logs.occurred_at, _logs.id)
        ).all()


def _pending_counts(session, organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime) -> dict[str, int]:
    row = session.execute(
        sa.select(
            sa.func.count().filter(_logs.status == models.UsageStatus.RECORDED).label("recorded"),
            sa.func.count().filter(_logs.status == models.UsageStatus.FAILED).label("failed"),
            sa.func.count()
            .filter(_logs.status == models.UsageStatus.FAILED, usage_rows.unreconciled())
            .label("unreconciled"),
            sa.func.count().filter(_logs.status == models.UsageStatus.VOIDED, ~usage_voids.billed_at_stripe()).label("voided"),
        ).where(_logs.organization_id == organization_id, _logs.occurred_at >= since, _logs.occurred_at < until)
    ).one()
    return row._asdict()


def _rows_from(session, organization_id: uuid.UUID, moment: dt.datetime) -> int:
    """The organization's rows, of any status, that occurred at or after ``moment``."""
    return session.scalar(
        sa.select(sa.func.count())
        .select_from(_logs)
        .where(_logs.organization_id == organization_id, _logs.occurred_at >= moment)
    )


# --- the Stripe side ---------------------------------------------------------------------


def _meter(client: stripe.StripeClient, event_name: str):
    """The meter counting ``event_name``: the active one, else an inactive one (its history)."""
    try:
        meter = stripe_meter.select_meter(
            client.v1.billing.meters.list({"limit": stripe_meter.PAGE_SIZE}).auto_paging_iter(), event_name
        )
    except stripe.StripeError as error:
        raise _stripe_failed(error) from None
    if meter is None:
        raise click.ClickException(f"Stripe has no billing meter for event name {event_name!r}.")
    return meter


class _OutOfRequests(Exception):
    pass


class Summaries:
    """One customer's meter event summaries, counting the requests made for them."""

    def __init__(self, client: stripe.StripeClient, meter_id: str, customer: str):
        self.client, self.meter_id, self.customer = client, meter_id, customer
        self.requests = 0
        self.budget: int | None = None  # requests allowed from now on; None: no limit

    def total(self, start: dt.datetime, end: dt.datetime) -> Decimal:
        """What Stripe counts in [start, end) (minute boundaries), in one request."""
        return sum((stripe_meter.summary_value(s) for s in self._list(start, end)), Decimal(0))

    def by(self, pieces: list[tuple[dt.datetime, dt.datetime]], unit: dt.timedelta) -> dict[dt.datetime, Decimal]:
        """Stripe's totals of ``_pieces(..., unit)``, keyed by piece start: the whole units in
        one request grouped by ``unit``, a partial first or last piece in a request of its own."""
        totals: dict[dt.datetime, Decimal] = {}
        whole = [(start, end) for start, end in pieces if end - start == unit]
        if whole:
            # Whole pieces are contiguous (only the first and last can be partial).
            for summary in self._list(whole[0][0], whole[-1][1], _GROUPING[unit]):
                start = dt.datetime.fromtimestamp(summary.start_time, dt.UTC)
                totals[start] = totals.get(start, Decimal(0)) + stripe_meter.summary_value(summary)
        for start, end in pieces:
            if end - start != unit:
                totals[start] = self.total(start, end)
        return totals

    def _list(self, start: dt.datetime, end: dt.datetime, grouping: str | None = None) -> list:
        if self.budget is not None and self.requests >= self.budget:
            raise _OutOfRequests
        self.requests += 1
        try:
            return stripe_meter.list_summaries(self.client, self.meter_id, self.customer, start, end, grouping)
        except stripe.StripeError as error:
            raise _stripe_failed(error) from None


def _stripe_failed(error: stripe.StripeError) -> click.ClickException:
    if isinstance(error, stripe.APIConnectionError):
        return click.ClickException(f"Stripe could not be reached: {error.user_message or error}")
    return click.ClickException(f"Stripe refused the request ({error.http_status}): {error.user_message or error}")


# --- drilling down: days, hours, minutes, rows --------------------------------------------


def _drill_down(organization_id: uuid.UUID, summaries: Summaries, days: list[Period]) -> Findings:
    """The hours and minutes that differ inside the differing ``days``, with their rows.

    The day totals are already printed, so a Stripe failure or the request budget here
    ends the drill-down with a note instead of the comparison's error exit.
    """
    findings = Findings()
    summaries.budget = summaries.requests + MAX_DRILL_DOWN_REQUESTS
    try:
        for day in days:
            pieces = _pieces(day.start, day.end, HOUR)
            with store.operator_transaction() as session:
                database = _database_totals(session, organization_id, day.start, day.end, "hour")
            stripe_hours = summaries.by(pieces, HOUR)
            hours = [Period(s, e, database.get(s, 0), stripe_hours.get(s, Decimal(0))) for s, e in pieces]
            findings.hours += [hour for hour in hours if hour.difference]
        for hour in findings.hours:
            findings.minutes += _differing_minutes(organization_id, summaries, hour)
    except _OutOfRequests:
        findings.stopped = (
            f"Stopped looking after {MAX_DRILL_DOWN_REQUESTS} more Stripe requests; give a narrower --since/--until "
            "to follow the rest."
        )
    except click.ClickException as error:
        findings.stopped = f"Stopped looking: {error.message}"
    more = [minute for minute in findings.minutes if minute.period.difference < 0]
    if more:
        unreported = _rows_in(organization_id, more[0].period.start, more[-1].period.end, reported=False)
        for minute in more:
            minute.unreported = [row for row in unreported if _floor(row.occurred_at, MINUTE) == minute.period.start]
    return findings


def _differing_minutes(organization_id: uuid.UUID, summaries: Summaries, hour: Period) -> list[Minute]:
    by_minute: dict[dt.datetime, list] = {}
    for row in _rows_in(organization_id, hour.start, hour.end, reported=True):
        by_minute.setdefault(_floor(row.occurred_at, MINUTE), []).append(row)
    minutes = []
    counted = Decimal(0)  # what Stripe counts in the minutes holding rows
    for start, rows in sorted(by_minute.items()):
        end = start + MINUTE
        period = Period(start, end, sum(row.stripe_value for row in rows), summaries.total(start, end))
        counted += period.stripe
        if period.difference:
            minutes.append(_judged(period, rows))
    elsewhere = hour.stripe - counted
    if elsewhere:
        gaps = _gaps(hour.start, hour.end, set(by_minute))
        counted_elsewhere = _counted_minutes(summaries, gaps, elsewhere)
        minutes += [Minute(Period(start, start + MINUTE, 0, value)) for start, value in counted_elsewhere]
    return sorted(minutes, key=lambda minute: minute.period.start)


def _judged(period: Period, rows: list) -> Minute:
    """Which of a minute's reported rows Stripe lacks, when that can be told from totals."""
    if period.difference < 0:
        return Minute(period, rows)
    lacking, certain = stripe_meter.rows_stripe_lacks(rows, period.difference)
    return Minute(period, rows, missing=lacking) if certain else Minute(period, rows, candidates=lacking)


def _gaps(start: dt.datetime, end: dt.datetime, taken: set[dt.datetime]) -> list[tuple[dt.datetime, dt.datetime]]:
    """The runs of minutes of [start, end) not in ``taken``."""
    gaps: list[tuple[dt.datetime, dt.datetime]] = []
    minute = start
    while minute < end:
        if minute not in taken:
            if gaps and gaps[-1][1] == minute:
                gaps[-1] = (gaps[-1][0], minute + MINUTE)
            else:
                gaps.append((minute, minute + MINUTE))
        minute += MINUTE
    return gaps


def _counted_minutes(
    summaries: Summaries, ranges: list[tuple[dt.datetime, dt.datetime]], total: Decimal
) -> list[tuple[dt.datetime, Decimal]]:
    """The minutes of ``ranges`` where Stripe counts something, ``total`` being their sum."""
    values = [total] if len(ranges) == 1 else [summaries.total(start, end) for start, end in ranges]
    found = []
    for (start, end), value in zip(ranges, values, strict=True):
        found += _halved(summaries, start, end, value)
    return found


def _halved(summaries: Summaries, start: dt.datetime, end: dt.datetime, value: Decimal) -> list:
    if not value:
        return []
    if end - start == MINUTE:
        return [(start, value)]
    middle = start + MINUTE * ((end - start) // MINUTE // 2)
    first = summaries.total(start, middle)
    return _halved(summaries, start, middle, first) + _halved(summaries, middle, end, value - first)


# --- the report ---------------------------------------------------------------------------


def _print_findings(findings: Findings) -> None:
    if findings.hours:
        click.echo("Hours that differ (UTC):")
        _print_periods("HOUR", findings.hours, lambda hour: _time(hour.start))
    if findings.minutes:
        click.echo("Minutes that differ (UTC):")
        _print_periods("MINUTE", findings.minutes, lambda minute: _time(minute.period.start), finding=True)
    missing = [row for minute in findings.minutes for row in minute.missing]
    if missing:
        click.echo(f"Missing at Stripe: reported in the database, not counted by Stripe ({len(missing)}):")
        output.print_table(["ID", "OCCURRED_AT", "VALUE"], [_row_cells(row) for row in missing], right={2})
    candidates = [minute for minute in findings.minutes if minute.candidates]
    if candidates:
        click.echo("Candidates: Stripe lacks part of these minutes' rows, and which ones cannot be told from totals:")
        output.print_table(
            ["ID", "OCCURRED_AT", "VALUE", "MINUTE_LACKS"],
            [[*_row_cells(row), _number(m.period.difference)] for m in candidates for row in m.candidates],
            right={2, 3},
        )
    more = [minute for minute in findings.minutes if minute.period.difference < 0]
    if more:
        click.echo(
            "Stripe counts more in these minutes. Stripe has no API to list meter events, so events at Stripe "
            "that the database does not have as reported can only be shown as their minutes:"
        )
        output.print_table(
            ["MINUTE", "MORE_AT_STRIPE", "ROWS_HERE_NOT_REPORTED"],
            [
                [_time(m.period.start), _number(-m.period.difference),
                 "; ".join(f"{row.id} ({row.status}, {row.stripe_value})" for row in m.unreported) or "-"]
                for m in more
            ],
            right={1},
        )
    _print_next_steps(findings, missing, candidates, more)


def _print_next_steps(findings: Findings, missing: list, candidates: list, more: list) -> None:
    steps = []
    voiding = [row for row in missing if row.void]
    if resend := [row for row in missing if not row.void]:
        steps.append(
            "Re-send the rows missing at Stripe (same identifiers; Stripe does not have them):\n    "
            f"flask --app ingest_api usage retry {' '.join(f'--id {row.id}' for row in resend)} --force"
        )
    if voiding:
        steps.append(
            f"Do not re-send the {len(voiding)} missing row(s) with a void ({', '.join(str(row.id) for row in voiding)}): "
            "a manual credit's row is billed as it was, and a pending cancel or negative event takes the rest back; "
            "`usage voids` shows each."
        )
    if candidates:
        steps.append(
            "Find which candidates Stripe lacks (the customer's meter events in the Stripe Dashboard), then re-send "
            "only those: flask --app ingest_api usage retry --id ID --force"
        )
    if more:
        steps.append(
            "Where Stripe counts more, a row listed there as failed may be one Stripe took though its answer was "
            "lost: do not retry it. Nothing else there can be corrected from the database."
        )
    newest = max((minute.period.end for minute in findings.minutes), default=None)
    if newest is not None and newest > dt.datetime.now(dt.UTC) - SUMMARY_LAG:
        steps.append(
            "Stripe's summaries may lag new events by a few minutes: run again before re-sending rows that recent."
        )
    if findings.stopped:
        steps.append(findings.stopped)
    elif not findings.minutes:
        steps.append(
            "No " + ("minute" if findings.hours else "hour") + " differs any more: rows were reported or Stripe's "
            "summaries caught up while comparing. Run again."
        )
    if steps:
        click.echo("What to do next:")
        for step in steps:
            click.echo(f"  - {step}")


def _print_periods(label: str, periods: Sequence, start_text, *, finding: bool = False) -> None:
    """The DATABASE / STRIPE / DIFFERENCE table of days, hours or minutes."""
    rows = []
    for item in periods:
        period = item.period if finding else item
        cells = [start_text(item), _number(period.database), _number(period.stripe), _number(period.difference)]
        rows.append([*cells, item.finding] if finding else cells)
    headers = [label, "DATABASE", "STRIPE", "DIFFERENCE", *(["FINDING"] if finding else [])]
    output.print_table(headers, rows, right={1, 2, 3})


def _row_cells(row) -> list[str]:
    return [str(row.id), _time(row.occurred_at), str(row.stripe_value)]


def _time(value: dt.datetime) -> str:
    return output.time_text(value)


def _number(value: int | Decimal) -> str:
    value = Decimal(value)
    return str(value.quantize(Decimal(1))) if value == value.to_integral_value() else str(value.normalize())


def _usd(value: int | Decimal, decimals: int) -> str:
    return str(Decimal(value).scaleb(-decimals).quantize(Decimal(1).scaleb(-decimals)))
