"""``users``: callers of the API and whom usage is attributed to, with their memberships."""

from __future__ import annotations

import uuid

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from operator_cli import output, parameters, store
from shared import models

users_cli = AppGroup("users", help="Users (callers of the API, and whom usage is attributed to).")


@users_cli.command("create")
@click.option("--email", required=True, type=parameters.EMAIL, help="Unique, compared case-insensitively.")
@click.option("--inactive", is_flag=True, help="Create the user inactive: it cannot call the API.")
def create_user(email: str, inactive: bool) -> None:
    """Create a user; print its id."""
    duplicate_email = {
        "uq_users_email_lower": f"A user with email {email!r} already exists (emails are compared case-insensitively)."
    }
    with store.operator_transaction(duplicate_email) as session:
        user = models.User(email=email, is_active=not inactive)
        session.add(user)
        session.flush()
    click.echo(user.id)


@users_cli.command("list")
@output.json_option
def list_users(as_json: bool) -> None:
    """List every user with its memberships and their roles."""
    with store.operator_transaction() as session:
        users = session.scalars(sa.select(models.User).order_by(models.User.email)).all()
        by_user: dict[uuid.UUID, list[store.Membership]] = {}
        for membership in store.memberships(session):
            by_user.setdefault(membership.user_id, []).append(membership)
    if as_json:
        output.print_json(
            {"users": [_user_json(user) | {"memberships": [m.as_json("user") for m in by_user.get(user.id, [])]}
                       for user in users]}
        )
        return
    if not users:
        click.echo("No users.")
        return
    output.print_table(
        ["ID", "ACTIVE", "CREATED_AT", "EMAIL", "MEMBERSHIPS"],
        [
            [
                str(user.id), output.yes_no(user.is_active), output.time_text(user.created_at), user.email,
                "; ".join(_membership_text(m) for m in by_user.get(user.id, [])) or "-",
            ]
            for user in users
        ],
    )


@users_cli.command("show")
@parameters.user_option()
@output.json_option
def show_user(user_id: uuid.UUID, as_json: bool) -> None:
    """Show a user with its memberships and their roles."""
    with store.operator_transaction() as session:
        user = store.user_by_id(session, user_id)
        memberships = store.memberships(session, models.OrganizationMembership.user_id == user_id)
    fields = [
        ("email", user.email), ("active", output.yes_no(user.is_active)), ("created at", output.time_text(user.created_at)),
    ]
    json_body = _user_json(user) if as_json else None
    store.show_with_memberships(f"User {user.id}", fields, json_body, memberships, "user")


@users_cli.command("activate")
@parameters.user_option()
def activate_user(user_id: uuid.UUID) -> None:
    """Activate a user: it may call the API again (with its roles); print its id."""
    store.set_active(_locked(user_id), True, f"User {user_id}", "Usage attributed to the user")


@users_cli.command("deactivate")
@parameters.user_option()
def deactivate_user(user_id: uuid.UUID) -> None:
    """Deactivate a user: its JWTs and App Passwords are refused; print its id. Usage
    attributed to it is still accepted and billed."""
    store.set_active(_locked(user_id), False, f"User {user_id}", "Usage attributed to the user")


def _locked(user_id: uuid.UUID):
    return lambda session: store.user_by_id(session, user_id, lock=True)


def _user_json(user: models.User) -> dict:
    return {
        "id": str(user.id), "email": user.email, "active": user.is_active,
        "created_at": output.time_text(user.created_at),
    }


def _membership_text(membership: store.Membership) -> str:
    inactive = [
        what for what, active in (("membership", membership.active), ("organization", membership.organization_active))
        if not active
    ]
    state = f" [inactive {' and '.join(inactive)}]" if inactive else ""
    return f"{membership.organization_name} ({','.join(membership.roles) or 'no roles'}){state}"
