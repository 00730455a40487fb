"""``prices set`` / ``list`` / ``retire``: per-token rates of a model, effective from a point in time.

Prices are never edited: a new row from a later ``effective_from`` supersedes the old
one, so events already billed keep the price they were billed at. A row is in effect
from its ``effective_from`` until the next row's of the same model (or open); an event
is priced, when it is recorded, by the row in effect at its ``occurred_at``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal

import click
import sqlalchemy as sa
from flask.cli import AppGroup
from sqlalchemy import orm

from operator_cli import output, parameters, store
from shared import models

prices_cli = AppGroup("prices", help="Per-token model prices (text_model_costs).")

_costs = models.TextModelCost
_logs = models.UserBillableRequestLog
# The log rows' foreign key to their price row, as the database names it (SQLAlchemy cut
# the conventional name to PostgreSQL's 63 characters, with a hash).
LOG_PRICE_FOREIGN_KEY = "fk_user_billable_request_logs_text_model_cost_id_text_m_fb45"
_RATES = (
    ("input_cost_per_token", "INPUT"),
    ("output_cost_per_token", "OUTPUT"),
    ("agent700_input_cost_per_token", "A700_INPUT"),
    ("agent700_output_cost_per_token", "A700_OUTPUT"),
)


@prices_cli.command("set")
@click.option("--model", "model_name", required=True, type=parameters.LABEL, help="The API's model_name.")
@click.option("--input-per-token", "input_cost", required=True, type=parameters.PER_TOKEN_RATE,
              help="What the provider charges per input token, e.g. 0.00000015.")
@click.option("--output-per-token", "output_cost", required=True, type=parameters.PER_TOKEN_RATE,
              help="What the provider charges per output token.")
@click.option("--agent700-input-per-token", "agent700_input_cost", required=True, type=parameters.PER_TOKEN_RATE,
              help="What Agent700 bills per input token.")
@click.option("--agent700-output-per-token", "agent700_output_cost", required=True, type=parameters.PER_TOKEN_RATE,
              help="What Agent700 bills per output token.")
@click.option("--effective-from", type=parameters.RFC3339_TIME,
              help="RFC 3339 time with timezone from which these rates apply  [default: now].")
@click.option("--yes", is_flag=True,
              help="Add the row even though recorded events fall in its window (they keep their price).")
def set_price(
    model_name: str,
    input_cost: Decimal,
    output_cost: Decimal,
    agent700_input_cost: Decimal,
    agent700_output_cost: Decimal,
    effective_from: dt.datetime | None,
    yes: bool,
) -> None:
    """Add a price row for a model; print its id.

    An --effective-from in the past opens a window that may hold events already
    recorded: they keep the price they were recorded with (rows are never re-priced), so
    the new row prices only events recorded from now on. If any recorded event of the
    model occurred in the window (from --effective-from until the next later row's
    effective_from, or open), the row is refused unless --yes is given.
    """
    effective_from = effective_from or dt.datetime.now(dt.UTC)
    duplicate_price = {
        "uq_text_model_costs_model_name": (
            f"Model {model_name!r} already has a price effective from {effective_from.isoformat()}."
        )
    }
    with store.operator_transaction(duplicate_price) as session:
        price = models.TextModelCost(
            model_name=model_name,
            input_cost_per_token=input_cost,
            output_cost_per_token=output_cost,
            agent700_input_cost_per_token=agent700_input_cost,
            agent700_output_cost_per_token=agent700_output_cost,
            effective_from=effective_from,
        )
        session.add(price)
        session.flush()
        # After the insert, so a duplicate time is named as such first; a refusal rolls it back.
        recorded = _recorded_in_window(session, model_name, effective_from)
        if recorded:
            count, until = recorded
            window = f"from {output.time_text(effective_from)} " + (
                f"until {output.time_text(until)}" if until else "on (open)"
            )
            already_priced = (
                f"{count} recorded event(s) of model {model_name!r} occurred {window}; they keep the price they "
                "were recorded with, this row prices only events recorded from now on"
            )
            if not yes:
                raise click.ClickException(f"{already_priced}. Give --yes to add it anyway.")
            click.echo(f"Note: {already_priced}.", err=True)
    click.echo(f"Price of {model_name!r} effective from {effective_from.isoformat()}.", err=True)
    click.echo(price.id)


@prices_cli.command("list")
@click.option("--model", "model_name", type=parameters.LABEL, help="Only this model  [default: every model].")
@output.json_option
def list_prices(model_name: str | None, as_json: bool) -> None:
    """List price rows per model with the range each is in effect.

    A row is in effect from its effective_from until the next row's of the same model;
    the latest row's range is open.
    """
    query = sa.select(_costs).order_by(_costs.model_name, _costs.effective_from)
    with store.operator_transaction() as session:
        rows = session.scalars(query.where(_costs.model_name == model_name) if model_name else query).all()
        if model_name and not rows:
            known = session.scalars(sa.select(_costs.model_name).distinct().order_by(_costs.model_name)).all()
            raise click.ClickException(
                f"No price rows for model {model_name!r}; models with prices: {', '.join(known) or 'none'}."
            )
    now = dt.datetime.now(dt.UTC)
    # Ordered by model, then time: a row's range ends where the next row of its model starts.
    ranges = [
        (row, following.effective_from if following is not None and following.model_name == row.model_name else None)
        for row, following in itertools.zip_longest(rows, rows[1:])
    ]
    if as_json:
        output.print_json(
            {
                "prices": [
                    {
                        "id": str(row.id), "model_name": row.model_name,
                        **{column: format(getattr(row, column), "f") for column, _ in _RATES},
                        "effective_from": output.time_text(row.effective_from),
                        "until": output.time_text(until) or None,
                        "in_effect_now": row.effective_from <= now and (until is None or now < until),
                    }
                    for row, until in ranges
                ]
            }
        )
        return
    if not rows:
        click.echo("No prices.")
        return
    output.print_table(
        ["ID", "MODEL", *(header for _, header in _RATES), "EFFECTIVE_FROM", "UNTIL", "NOW"],
        [
            [
                str(row.id), row.model_name, *(output.decimal_text(getattr(row, column)) for column, _ in _RATES),
                output.time_text(row.effective_from), output.time_text(until, "open"),
                "in effect" if row.effective_from <= now and (until is None or now < until) else "",
            ]
            for row, until in ranges
        ],
    )


@prices_cli.command("retire")
@click.option("--id", "price_id", required=True, type=click.UUID,
              help="The price row's id (as `prices list` shows it).")
def retire_price(price_id: uuid.UUID) -> None:
    """Delete a price row no event has used yet (one added by mistake); print its id.

    Refused if any recorded event was priced with it: a row keeps the price it was
    recorded with, so such a row stays; add a newer row with `prices set` instead.
    Events still queued (accepted, not yet recorded) are priced by whatever row is in
    effect at their occurred_at when they are recorded: after this, the row before it,
    or none (then they are rejected as "no price in effect", kept for `usage retry`).
    """
    used_by_an_event_meanwhile = {
        LOG_PRICE_FOREIGN_KEY: f"Price row {price_id} was just used by an event being recorded; it cannot be retired."
    }
    with store.operator_transaction(used_by_an_event_meanwhile) as session:
        # Locked first: an event being recorded with it now waits, then finds it gone
        # (its batch is retried and priced again), or has committed and is counted here.
        price = session.get(_costs, price_id, with_for_update=True)
        if price is None:
            raise click.ClickException(f"No price row with id {price_id}.")
        used = session.scalar(sa.select(sa.func.count()).select_from(_logs).where(_logs.text_model_cost_id == price_id))
        if used:
            raise click.ClickException(
                f"Price row {price_id} of model {price.model_name!r} was used by {used} recorded event(s); they keep "
                "the price they were recorded with, so it cannot be retired. Add a newer row with `prices set`."
            )
        previous = _row_before(session, price)
        session.delete(price)
    if previous is None:
        after = f"model {price.model_name!r} has no price in effect from {output.time_text(price.effective_from)} on"
    else:
        after = f"the row effective from {output.time_text(previous.effective_from)} ({previous.id}) applies there"
    click.echo(f"Retired price row of {price.model_name!r} effective from {output.time_text(price.effective_from)}; "
               f"{after}.", err=True)
    click.echo(price_id)


def _recorded_in_window(
    session: orm.Session, model_name: str, effective_from: dt.datetime
) -> tuple[int, dt.datetime | None] | None:
    """How many recorded events of the model occurred in the new row's window, and the
    window's end; ``None`` when there are none (or the window is not in the past)."""
    if effective_from >= dt.datetime.now(dt.UTC):
        return None
    until = session.scalar(
        sa.select(sa.func.min(_costs.effective_from)).where(
            _costs.model_name == model_name, _costs.effective_from > effective_from
        )
    )
    window = [_logs.model_name == model_name, _logs.occurred_at >= effective_from]
    if until is not None:
        window.append(_logs.occurred_at < until)
    count = session.scalar(sa.select(sa.func.count()).select_from(_logs).where(*window))
    return (count, until) if count else None


def _row_before(session: orm.Session, price: models.TextModelCost) -> models.TextModelCost | None:
    return session.scalars(
        sa.select(_costs)
        .where(_costs.model_name == price.model_name, _costs.effective_from < price.effective_from)
        .order_by(_costs.effective_from.desc())
        .limit(1)
    ).first()
