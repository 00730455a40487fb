"""``usage summary``: what an organization used over a window, from the command line, with
the figures of ``GET /api/billing/usage`` (``shared.usage_totals`` counts them; ``--json``
prints the endpoint's own document, ``ingest_api.usage_totals.answer``)."""

from __future__ import annotations

import datetime as dt
import uuid

import click
from flask.cli import with_appcontext

from ingest_api.usage_totals import answer
from operator_cli import output, parameters, store
from shared import usage_totals

_FIGURES = ["events", "input_tokens", "output_tokens", "service_cost", "agent700_cost", "stripe_value"]


@click.command("summary")
@with_appcontext
@parameters.organization_option("The organization whose usage to sum.")
@click.option("--since", required=True, type=parameters.RFC3339_TIME,
              help="Start of the window (inclusive), RFC 3339 with an offset, e.g. 2026-11-01T00:00:00Z.")
@click.option("--until", type=parameters.RFC3339_TIME,
              help=f"End of the window (exclusive), at most {usage_totals.MAX_SPAN.days} days after --since  "
                   "[default: now].")
@click.option("--by", "group_by", multiple=True, type=click.Choice(list(usage_totals.GROUPS)),
              help="Group by this (days and hours are UTC); repeat for several, in the order of the keys.")
@output.json_option
def summary(
    organization_id: uuid.UUID, since: dt.datetime, until: dt.datetime | None, group_by: tuple[str, ...], as_json: bool
) -> None:
    """Sum an organization's usage over [--since, --until), as GET /api/billing/usage does.

    Events, tokens, service_cost, agent700_cost (exact) and Stripe meter value, per group
    and in total, split by state: billed (reported to Stripe), pending (recorded, not
    reported yet), failed, voided. Recorded events only: an event still queued is not
    counted yet. With --json: the API's JSON document.
    """
    since, until = _window(since, until)
    if len(set(group_by)) != len(group_by):
        raise click.BadParameter("name each group once.", param_hint="'--by'")
    with store.operator_transaction() as session:
        store.organization_by_id(session, organization_id)
        document = answer(usage_totals.totals(session, organization_id, since, until, group_by))
    if as_json:
        output.print_json(document)
    else:
        _print_summary(document)


def _window(since: dt.datetime, until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """The window in UTC (PostgreSQL takes no offset beyond 15:59), or a usage error."""
    try:
        since = since.astimezone(dt.UTC)
        until = dt.datetime.now(dt.UTC) if until is None else until.astimezone(dt.UTC)
    except OverflowError:
        raise click.BadParameter("a time between the years 1 and 9999 in UTC.") from None
    try:
        usage_totals.check_window(since, until)
    except usage_totals.BadWindow as bad:
        message = str(bad).replace("`to`", "--until").replace("`from`", "--since")
        raise click.BadParameter(f"{message} ({output.time_text(since)} to {output.time_text(until)})",
                                 param_hint="'--until'") from None
    return since, until


def _print_summary(document: dict) -> None:
    """A table of the groups (none without --by) and the total; the last four columns
    are each state's agent700_cost."""
    click.echo(f"Usage of organization {document['organization_id']} from {document['from']} to {document['to']} "
               f"(exclusive), as of {document['as_of']}.")
    click.echo(document["covers"])
    keys = document["group_by"]
    groups = document["groups"] if keys else []
    rows = [[_key_text(group["key"].get(name)) for name in keys] + _figure_cells(group) for group in groups]
    total_label = ["TOTAL", *[""] * (len(keys) - 1)] if keys else []
    rows.append(total_label + _figure_cells(document["total"]))
    headers = [name.upper() for name in keys] + [f.upper() for f in _FIGURES] + [s.upper() for s in usage_totals.STATES]
    number_columns = range(len(keys), len(headers))
    output.print_table(headers, rows, right=number_columns)
    click.echo("BILLED, PENDING, FAILED, VOIDED: the agent700_cost of each state.")


def _figure_cells(figures: dict) -> list[str]:
    return [str(figures[name]) for name in _FIGURES] + [figures["by_state"][s]["agent700_cost"] for s in usage_totals.STATES]


def _key_text(value) -> str:
    return "(none)" if value is None else str(value)
