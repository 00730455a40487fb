"""``app-passwords create`` / ``revoke`` / ``list``: long-lived bearer secrets.

The token is printed once and never stored; only its SHA-256 and a lookup prefix are,
and no command prints either of them.
"""

from __future__ import annotations

import uuid

import click
import redis
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import orm

from ingest_api import credentials
from operator_cli import output, parameters, store
from shared import models, revocation_marks
from shared.intake import Intake

app_passwords_cli = AppGroup("app-passwords", help="App Passwords: revocable API credentials.")

APP_PASSWORD_NAME = parameters.Label(max_length=100)


def duplicate_name_message(user_id: uuid.UUID, name: str) -> dict[str, str]:
    return {"uq_app_passwords_user_id_name_live": f"User {user_id} already has a live App Password named {name!r}."}


@app_passwords_cli.command("create")
@click.option("--user", "user_id", required=True, type=click.UUID, help="The owner's user id.")
@click.option("--name", required=True, type=APP_PASSWORD_NAME, help="Unique among the user's live App Passwords.")
def create_app_password(user_id: uuid.UUID, name: str) -> None:
    """Create an App Password; print the token (shown this once only)."""
    with store.operator_transaction(duplicate_name_message(user_id, name)) as session:
        token = issue_app_password(session, user_id, name)
    click.echo(f"App Password {name!r} created; store it now, it cannot be shown again.", err=True)
    click.echo(token)


@app_passwords_cli.command("revoke")
@click.option("--user", "user_id", required=True, type=click.UUID, help="The owner's user id.")
@click.option("--name", required=True, type=APP_PASSWORD_NAME, help="The live App Password's name.")
def revoke_app_password(user_id: uuid.UUID, name: str) -> None:
    """Revoke a live App Password; it is refused from the next request on."""
    with store.operator_transaction() as session:
        store.user_by_id(session, user_id)
        # The row lock makes a concurrent second revoke wait, then find nothing live.
        live_password = session.scalars(
            sa.select(models.AppPassword)
            .where(
                models.AppPassword.user_id == user_id,
                models.AppPassword.name == name,
                models.AppPassword.revoked_at.is_(None),
            )
            .with_for_update()
        ).one_or_none()
        if live_password is None:
            ever_existed = session.scalar(
                sa.select(
                    sa.exists().where(models.AppPassword.user_id == user_id, models.AppPassword.name == name)
                )
            )
            if ever_existed:
                raise click.ClickException(f"The App Password {name!r} of user {user_id} is already revoked.")
            raise click.ClickException(f"User {user_id} has no App Password named {name!r}.")
        live_password.revoked_at = sa.func.now()
    click.echo(f"Revoked App Password {name!r} of user {user_id}.")
    mark_revoked_in_broker(live_password.id)


@app_passwords_cli.command("list")
@parameters.user_option(help="The owner's user id.")
@output.json_option
def list_app_passwords(user_id: uuid.UUID, as_json: bool) -> None:
    """List a user's App Passwords: name, created, last used, revoked (never the secret)."""
    with store.operator_transaction() as session:
        store.user_by_id(session, user_id)
        passwords = session.execute(
            # Named columns only: the hash and the lookup prefix never leave the database.
            sa.select(
                models.AppPassword.name, models.AppPassword.created_at, models.AppPassword.last_used_at,
                models.AppPassword.revoked_at,
            )
            .where(models.AppPassword.user_id == user_id)
            .order_by(models.AppPassword.created_at, models.AppPassword.name)
        ).all()
    if as_json:
        output.print_json(
            {
                "user_id": str(user_id),
                "app_passwords": [
                    {
                        "name": row.name, "created_at": output.time_text(row.created_at),
                        "last_used_at": output.time_text(row.last_used_at) or None,
                        "revoked_at": output.time_text(row.revoked_at) or None,
                    }
                    for row in passwords
                ],
            }
        )
        return
    if not passwords:
        click.echo(f"User {user_id} has no App Passwords.")
        return
    output.print_table(
        ["CREATED_AT", "LAST_USED_AT", "REVOKED_AT", "NAME"],
        [
            [
                output.time_text(row.created_at), output.time_text(row.last_used_at, "never"),
                output.time_text(row.revoked_at, "-"), row.name,
            ]
            for row in passwords
        ],
    )


def mark_revoked_in_broker(app_password_id: uuid.UUID) -> None:
    """Web processes cache verified callers; the publish script checks this mark, so the
    revocation is refused from the very next request, cached or not."""
    settings = current_app.config["SETTINGS"]
    try:
        revocation_marks.mark_revoked(Intake.for_settings(settings).redis, app_password_id)
    except redis.RedisError:
        click.echo(
            f"Warning: Redis did not answer; web processes that cached this App Password accept it for up to "
            f"{settings.auth_cache_seconds:g} more seconds.",
            err=True,
        )


def issue_app_password(session: orm.Session, user_id: uuid.UUID, name: str) -> str:
    """Store a new App Password for the user and return its token, the only copy there is."""
    # Locking the user serializes its concurrent creations, so two of them cannot both
    # count 9 live passwords and end with 11.
    store.user_by_id(session, user_id, lock=True)
    live_count = session.scalar(
        sa.select(sa.func.count())
        .select_from(models.AppPassword)
        .where(models.AppPassword.user_id == user_id, models.AppPassword.revoked_at.is_(None))
    )
    if live_count >= models.MAX_APP_PASSWORDS_PER_USER:
        raise click.ClickException(
            f"User {user_id} already has {live_count} live App Passwords, the most allowed "
            f"({models.MAX_APP_PASSWORDS_PER_USER}); revoke one first."
        )
    secret = credentials.new_app_password()
    session.add(
        models.AppPassword(
            user_id=user_id, name=name, lookup_prefix=secret.lookup_prefix, password_hash=secret.password_hash
        )
    )
    session.flush()
    return secret.token
