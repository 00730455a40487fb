"""``users create``."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ingest_api.cli import parameters, store
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
