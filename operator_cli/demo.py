"""``seed-demo``: everything a first API call needs, and an App Password to make it with.

Re-runnable: existing demo rows are reused (and re-activated), and each run revokes the
previous demo App Password and issues a fresh one, since the old token was shown once
and is gone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import click
import sqlalchemy as sa
from flask.cli import with_appcontext
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import insert as pg_insert

from operator_cli import app_passwords, memberships, store
from shared import models

DEMO_ORGANIZATION_NAME = "Agent700 Demo"
DEMO_STRIPE_CUSTOMER_ID = "cus_demo_agent700"
DEMO_SUPERADMIN_EMAIL = "demo-superadmin@agent700.example"
DEMO_SERVICE_NAME = "transcription"
DEMO_APP_PASSWORD_NAME = "demo"
# Fixed, so a second run finds the same (model, effective_from) rows instead of adding more.
DEMO_PRICES_EFFECTIVE_FROM = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class DemoPrice:
    input_cost: Decimal  # what the provider charges per token
    output_cost: Decimal
    agent700_input_cost: Decimal  # what Agent700 bills per token (a 2x markup here)
    agent700_output_cost: Decimal


# The providers' public list prices per token, in USD.
DEMO_PRICES = {
    "gpt-4o-mini": DemoPrice(Decimal("0.00000015"), Decimal("0.0000006"), Decimal("0.0000003"), Decimal("0.0000012")),
    "gpt-4o": DemoPrice(Decimal("0.0000025"), Decimal("0.00001"), Decimal("0.000005"), Decimal("0.00002")),
    "claude-3-5-sonnet-20241022": DemoPrice(
        Decimal("0.000003"), Decimal("0.000015"), Decimal("0.000006"), Decimal("0.00003")
    ),
}


@click.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """Create (or reuse) the demo data; print a fresh demo App Password on the last line."""
    with store.operator_transaction() as session:
        organization = _demo_organization(session)
        superadmin = _demo_superadmin(session)
        superadmin_role = memberships.roles_named(session, [models.SUPERADMIN])
        memberships.grant_membership(session, superadmin.id, organization.id, superadmin_role, active=True)
        _demo_service(session)
        _demo_prices(session)
        token = _fresh_demo_app_password(session, superadmin)

    click.echo(f"organization_id: {organization.id}  ({organization.name}, Stripe customer {organization.stripe_customer_id})")
    click.echo(f"user_id: {superadmin.id}  ({superadmin.email}, superadmin)")
    click.echo(f"service_name: {DEMO_SERVICE_NAME}")
    click.echo(f"model_name: {', '.join(DEMO_PRICES)}")
    click.echo(f"demo App Password '{DEMO_APP_PASSWORD_NAME}' (the previous one is revoked; shown once):")
    click.echo(token)


def _demo_organization(session: orm.Session) -> models.Organization:
    # ON CONFLICT DO NOTHING + select: a concurrent second run waits and reuses the row
    # instead of failing on the unique name.
    session.execute(
        pg_insert(models.Organization)
        .values(name=DEMO_ORGANIZATION_NAME, stripe_customer_id=DEMO_STRIPE_CUSTOMER_ID)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    organization = session.scalars(
        sa.select(models.Organization).where(models.Organization.name == DEMO_ORGANIZATION_NAME)
    ).one()
    organization.is_active = True
    # An operator may have pointed the demo at a real test-mode customer: keep theirs.
    organization.stripe_customer_id = organization.stripe_customer_id or DEMO_STRIPE_CUSTOMER_ID
    return organization


def _demo_superadmin(session: orm.Session) -> models.User:
    # No conflict target: the only unique key besides the id is the lower(email) index.
    session.execute(pg_insert(models.User).values(email=DEMO_SUPERADMIN_EMAIL).on_conflict_do_nothing())
    superadmin = session.scalars(
        sa.select(models.User).where(sa.func.lower(models.User.email) == DEMO_SUPERADMIN_EMAIL.lower())
    ).one()
    superadmin.is_active = True
    return superadmin


def _demo_service(session: orm.Session) -> None:
    session.execute(
        pg_insert(models.Service).values(name=DEMO_SERVICE_NAME).on_conflict_do_nothing(index_elements=["name"])
    )


def _demo_prices(session: orm.Session) -> None:
    session.execute(
        pg_insert(models.TextModelCost)
        .values(
            [
                {
                    "model_name": model_name,
                    "input_cost_per_token": price.input_cost,
                    "output_cost_per_token": price.output_cost,
                    "agent700_input_cost_per_token": price.agent700_input_cost,
                    "agent700_output_cost_per_token": price.agent700_output_cost,
                    "effective_from": DEMO_PRICES_EFFECTIVE_FROM,
                }
                for model_name, price in DEMO_PRICES.items()
            ]
        )
        .on_conflict_do_nothing(index_elements=["model_name", "effective_from"])
    )


def _fresh_demo_app_password(session: orm.Session, superadmin: models.User) -> str:
    # Lock the user first so a concurrent run cannot slip its password in between.
    store.user_by_id(session, superadmin.id, lock=True)
    session.execute(
        sa.update(models.AppPassword)
        .where(
            models.AppPassword.user_id == superadmin.id,
            models.AppPassword.name == DEMO_APP_PASSWORD_NAME,
            models.AppPassword.revoked_at.is_(None),
        )
        .values(revoked_at=sa.func.now())
    )
    return app_passwords.issue_app_password(session, superadmin.id, DEMO_APP_PASSWORD_NAME)
