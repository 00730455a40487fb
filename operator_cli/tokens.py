"""``tokens mint``: short-lived JWT access tokens for a user."""

from __future__ import annotations

import uuid

import click
from flask.cli import AppGroup

from ingest_api import credentials
from operator_cli import store

tokens_cli = AppGroup("tokens", help="JWT access tokens.")

DEFAULT_TTL_SECONDS = 3600
# A JWT cannot be revoked; a year is already far longer than an access token should live.
MAX_TTL_SECONDS = 365 * 24 * 3600


@tokens_cli.command("mint")
@click.option("--user", "user_id", required=True, type=click.UUID, help="The user the token authenticates (sub).")
@click.option(
    "--ttl-seconds",
    type=click.IntRange(min=1, max=MAX_TTL_SECONDS),
    default=DEFAULT_TTL_SECONDS,
    show_default=True,
    help="Seconds until the token expires.",
)
def mint_token(user_id: uuid.UUID, ttl_seconds: int) -> None:
    """Print a JWT access token for the user."""
    with store.operator_transaction() as session:
        user = store.user_by_id(session, user_id)
    if not user.is_active:
        click.echo(f"Warning: user {user_id} is inactive; the API refuses its tokens until it is active.", err=True)
    click.echo(credentials.mint_jwt(user_id, store.current_settings().jwt_secret, ttl_seconds))
