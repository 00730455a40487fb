"""``prices set``: per-token rates of a model, effective from a point in time.

Prices are never edited: a new row from a later ``effective_from`` supersedes the old
one, so events already billed keep the price they were billed at.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import click
from flask.cli import AppGroup

from ingest_api.cli import parameters, store
from shared import models

prices_cli = AppGroup("prices", help="Per-token model prices (text_model_costs).")


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
def set_price(
    model_name: str,
    input_cost: Decimal,
    output_cost: Decimal,
    agent700_input_cost: Decimal,
    agent700_output_cost: Decimal,
    effective_from: dt.datetime | None,
) -> None:
    """Add a price row for a model; print its id."""
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
    click.echo(f"Price of {model_name!r} effective from {effective_from.isoformat()}.", err=True)
    click.echo(price.id)
