"""``orgs create``: the organizations usage is billed to."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ingest_api.cli import parameters, store
from shared import models

orgs_cli = AppGroup("orgs", help="Organizations (the customers billed in Stripe).")


@orgs_cli.command("create")
@click.option("--name", required=True, type=parameters.LABEL, help="Unique organization name.")
@click.option(
    "--stripe-customer-id",
    type=parameters.STRIPE_CUSTOMER_ID,
    help="The Stripe customer its usage is reported for (cus_...).",
)
@click.option("--inactive", is_flag=True, help="Create it inactive: its members cannot call the API.")
def create_organization(name: str, stripe_customer_id: str | None, inactive: bool) -> None:
    """Create an organization; print its id."""
    duplicate_name = {"uq_organizations_name": f"An organization named {name!r} already exists."}
    with store.operator_transaction(duplicate_name) as session:
        organization = models.Organization(
            name=name, stripe_customer_id=stripe_customer_id, is_active=not inactive
        )
        session.add(organization)
        session.flush()
    if stripe_customer_id is None:
        click.echo("Note: no Stripe customer id; its usage cannot be reported to Stripe.", err=True)
    click.echo(organization.id)
