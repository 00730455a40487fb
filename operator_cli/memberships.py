"""``members``: a user's membership of an organization, with its roles and active flag."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import click
import sqlalchemy as sa
from flask.cli import AppGroup
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import insert as pg_insert

from operator_cli import parameters, store
from shared import models

members_cli = AppGroup("members", help="Organization memberships and their roles.")


@members_cli.command("add")
@click.option("--user", "user_id", required=True, type=click.UUID, help="The user's id.")
@click.option("--org", "organization_id", required=True, type=click.UUID, help="The organization's id.")
@click.option("--role", "role_names", required=True, multiple=True, help="A role to grant; repeat for several.")
@click.option("--inactive", is_flag=True, help="Make the membership inactive (it grants nothing).")
def add_member(user_id: uuid.UUID, organization_id: uuid.UUID, role_names: tuple[str, ...], inactive: bool) -> None:
    """Add a user to an organization with the given roles; print the membership id.

    If the membership exists, the roles are added to the ones it has and its active flag
    is set as asked.
    """
    with store.operator_transaction() as session:
        roles = roles_named(session, role_names)
        store.user_by_id(session, user_id)
        store.organization_by_id(session, organization_id)
        membership = grant_membership(session, user_id, organization_id, roles, active=not inactive)
        granted = sorted(role.name for role in membership.roles)
    state = "active" if membership.is_active else "inactive"
    click.echo(f"Membership {state}, roles: {', '.join(granted)}.", err=True)
    click.echo(membership.id)


@members_cli.command("activate")
@parameters.user_option()
@parameters.organization_option()
def activate_member(user_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """Activate a membership: its roles count again; print the membership id."""
    _set_active(user_id, organization_id, True)


@members_cli.command("deactivate")
@parameters.user_option()
@parameters.organization_option()
def deactivate_member(user_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """Deactivate a membership: it grants nothing (its roles are kept); print the membership id.
    Usage of the user billed to the organization is still accepted and billed."""
    _set_active(user_id, organization_id, False)


def _set_active(user_id: uuid.UUID, organization_id: uuid.UUID, active: bool) -> None:
    store.set_active(
        lambda session: store.membership_of(session, user_id, organization_id, lock=True),
        active,
        f"The membership of user {user_id} in organization {organization_id}",
        "Usage of the user billed to the organization",
    )


def roles_named(session: orm.Session, role_names: Iterable[str]) -> list[models.Role]:
    """The roles by name, in the order given; an unknown name lists the known ones."""
    known_roles = {role.name: role for role in session.scalars(sa.select(models.Role))}
    wanted_names = list(dict.fromkeys(role_names))
    unknown_names = [name for name in wanted_names if name not in known_roles]
    if unknown_names:
        raise click.BadParameter(
            f"unknown role {', '.join(map(repr, unknown_names))}; known roles: {', '.join(sorted(known_roles))}.",
            param_hint="'--role'",
        )
    return [known_roles[name] for name in wanted_names]


def grant_membership(
    session: orm.Session,
    user_id: uuid.UUID,
    organization_id: uuid.UUID,
    roles: Iterable[models.Role],
    *,
    active: bool,
) -> models.OrganizationMembership:
    """Create the membership or update the existing one: add ``roles``, set ``active``."""
    # Insert-if-absent, then lock the row: two operators adding roles to the same user at
    # once both succeed (no unique violation), and neither one's roles are lost.
    session.execute(
        pg_insert(models.OrganizationMembership)
        .values(user_id=user_id, organization_id=organization_id, is_active=active)
        .on_conflict_do_nothing(index_elements=["user_id", "organization_id"])
    )
    membership = session.scalars(
        sa.select(models.OrganizationMembership)
        .where(
            models.OrganizationMembership.user_id == user_id,
            models.OrganizationMembership.organization_id == organization_id,
        )
        .with_for_update()
    ).one()
    membership.is_active = active
    for role in roles:
        if role not in membership.roles:
            membership.roles.append(role)
    session.flush()
    return membership
