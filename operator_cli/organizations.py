"""``orgs``: the organizations usage is billed to, their Stripe customer and active flag."""

from __future__ import annotations

import uuid

import click
import sqlalchemy as sa
import stripe
from flask.cli import AppGroup

from operator_cli import output, parameters, store
from shared import models
from shared.stripe_client import stripe_client

orgs_cli = AppGroup("orgs", help="Organizations (the customers billed in Stripe).")

_NO_CUSTOMER = "none: its usage cannot be reported to Stripe"


def confirm_customer_at_stripe(stripe_customer_id: str) -> None:
    """Refuse a customer id Stripe does not know (a typo, another account, test vs live
    mode, a deleted customer): its events would be dropped by Stripe. Every command that
    stores a Stripe customer id calls this, before its transaction."""
    client = stripe_client(store.current_settings(), max_network_retries=1, timeout_seconds=10)
    try:
        customer = client.v1.customers.retrieve(stripe_customer_id)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404:
            raise click.ClickException(
                f"Stripe has no customer {stripe_customer_id} in this account (check the id, and test or live mode)."
            ) from None
        raise click.ClickException(f"Stripe refused to show customer {stripe_customer_id}: {error.user_message or error}") from None
    except stripe.StripeError as error:
        raise click.ClickException(
            f"Stripe could not be asked whether customer {stripe_customer_id} exists ({error.user_message or error}); "
            "nothing was changed. Try again when Stripe answers."
        ) from None
    if getattr(customer, "deleted", False):
        raise click.ClickException(f"Stripe customer {stripe_customer_id} is deleted; its usage could not be billed.")


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
    if stripe_customer_id is not None:
        confirm_customer_at_stripe(stripe_customer_id)
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


@orgs_cli.command("list")
@output.json_option
def list_organizations(as_json: bool) -> None:
    """List every organization: active or not, its Stripe customer, how many members."""
    members = (
        sa.select(sa.func.count())
        .where(models.OrganizationMembership.organization_id == models.Organization.id)
        .scalar_subquery()
    )
    with store.operator_transaction() as session:
        found = session.execute(sa.select(models.Organization, members).order_by(models.Organization.name)).all()
    if as_json:
        output.print_json(
            {"organizations": [_organization_json(org) | {"member_count": count} for org, count in found]}
        )
        return
    if not found:
        click.echo("No organizations.")
        return
    output.print_table(
        ["ID", "ACTIVE", "STRIPE_CUSTOMER", "MEMBERS", "CREATED_AT", "NAME"],
        [
            [
                str(organization.id), output.yes_no(organization.is_active), organization.stripe_customer_id or "-",
                str(count), output.time_text(organization.created_at), organization.name,
            ]
            for organization, count in found
        ],
    )


@orgs_cli.command("show")
@parameters.organization_option()
@output.json_option
def show_organization(organization_id: uuid.UUID, as_json: bool) -> None:
    """Show an organization with its Stripe customer and its members and their roles."""
    with store.operator_transaction() as session:
        organization = store.organization_by_id(session, organization_id)
        members = store.memberships(session, models.OrganizationMembership.organization_id == organization_id)
    fields = [
        ("name", organization.name),
        ("active", output.yes_no(organization.is_active)),
        ("stripe customer", organization.stripe_customer_id or _NO_CUSTOMER),
        ("created at", output.time_text(organization.created_at)),
    ]
    json_body = _organization_json(organization) if as_json else None
    store.show_with_memberships(f"Organization {organization.id}", fields, json_body, members, "organization")


@orgs_cli.command("set-stripe-customer")
@parameters.organization_option()
@click.option("--stripe-customer-id", required=True, type=parameters.STRIPE_CUSTOMER_ID,
              help="The Stripe customer its usage is reported for (cus_...).")
@click.option("--replace", is_flag=True, help="Replace a different Stripe customer id it already has.")
def set_stripe_customer(organization_id: uuid.UUID, stripe_customer_id: str, replace: bool) -> None:
    """Set the Stripe customer an organization's usage is reported for; print its id.

    The fix for rows failed with "has no Stripe customer id": set it, then run `usage
    retry --all-failed`. Replacing an id it already has needs --replace; usage already
    reported stays with the old customer at Stripe.
    """
    confirm_customer_at_stripe(stripe_customer_id)
    with store.operator_transaction() as session:
        organization = store.organization_by_id(session, organization_id, lock=True)
        previous = organization.stripe_customer_id
        if previous == stripe_customer_id:
            raise click.ClickException(f"Organization {organization_id} already has Stripe customer id {previous}.")
        if previous and not replace:
            raise click.ClickException(
                f"Organization {organization_id} already has Stripe customer id {previous}; "
                "give --replace to report its usage for another customer from now on."
            )
        organization.stripe_customer_id = stripe_customer_id
        failed = _failed_rows(session, organization_id)
    click.echo(f"Organization {organization_id}: Stripe customer id {stripe_customer_id} (was {previous or 'none'}).",
               err=True)
    if previous:
        click.echo(f"Usage already reported stays with {previous} at Stripe.", err=True)
    if failed:
        click.echo(
            f"It has {failed} failed row(s) (`usage failed` lists them); once their causes are fixed, re-drive them "
            "with `flask --app ingest_api usage retry --all-failed`.",
            err=True,
        )
    click.echo(organization_id)


@orgs_cli.command("clear-stripe-customer")
@parameters.organization_option()
def clear_stripe_customer(organization_id: uuid.UUID) -> None:
    """Remove an organization's Stripe customer id; print its id.

    Its usage recorded from then on is not reported: it fails with "has no Stripe
    customer id" until one is set again. Usage already reported stays at Stripe.
    """
    with store.operator_transaction() as session:
        organization = store.organization_by_id(session, organization_id, lock=True)
        previous = organization.stripe_customer_id
        if previous is None:
            raise click.ClickException(f"Organization {organization_id} has no Stripe customer id; nothing to clear.")
        organization.stripe_customer_id = None
    click.echo(
        f"Organization {organization_id}: Stripe customer id {previous} cleared; its usage not yet reported will fail "
        "until one is set (`orgs set-stripe-customer`).",
        err=True,
    )
    click.echo(organization_id)


@orgs_cli.command("activate")
@parameters.organization_option()
def activate_organization(organization_id: uuid.UUID) -> None:
    """Activate an organization: its members' roles count again; print its id."""
    store.set_active(_locked(organization_id), True, f"Organization {organization_id}", "Usage billed to it")


@orgs_cli.command("deactivate")
@parameters.organization_option()
def deactivate_organization(organization_id: uuid.UUID) -> None:
    """Deactivate an organization: its memberships grant nothing, so callers who are
    superadmin only through it are refused; print its id. Usage billed to it is still
    recorded and reported."""
    store.set_active(_locked(organization_id), False, f"Organization {organization_id}", "Usage billed to it")


def _locked(organization_id: uuid.UUID):
    return lambda session: store.organization_by_id(session, organization_id, lock=True)


def _failed_rows(session, organization_id: uuid.UUID) -> int:
    logs = models.UserBillableRequestLog
    return session.scalar(
        sa.select(sa.func.count())
        .select_from(logs)
        .where(logs.organization_id == organization_id, logs.status == models.UsageStatus.FAILED)
    )


def _organization_json(organization: models.Organization) -> dict:
    return {
        "id": str(organization.id),
        "name": organization.name,
        "active": organization.is_active,
        "stripe_customer_id": organization.stripe_customer_id,
        "created_at": output.time_text(organization.created_at),
    }
