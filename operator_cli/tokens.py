"""``tokens mint``: short-lived JWT access tokens for a user."""

from __future__ import annotations

import uuid

import click
from flask.cli import AppGroup

from ingest_api import credentials
from operator_cli import store

tokens_cli = AppGroup("tokens", help="JWT access tokens.")

DEFAULT_TTL_SECONDS = 3600


@tokens_cli.command("mint")
@click.option("--user", "user_id", required=True, type=click.UUID, help="The user the token authenticates (sub).")
@click.option(
    "--ttl-seconds",
    type=click.IntRange(min=1),
    default=None,
    show_default=f"{DEFAULT_TTL_SECONDS}, or JWT_MAX_LIFETIME_SECONDS if shorter",
    help="Seconds until the token expires, at most JWT_MAX_LIFETIME_SECONDS.",
)
def mint_token(user_id: uuid.UUID, ttl_seconds: int | None) -> None:
    """Print a JWT access token for the user."""
    settings = store.current_settings()
    # A JWT cannot be revoked, and the API refuses one that lives longer than this.
    longest = settings.jwt_max_lifetime_seconds
    if ttl_seconds is None:
        ttl_seconds = min(DEFAULT_TTL_SECONDS, longest)
    elif ttl_seconds > longest:
        raise click.BadParameter(
            f"{ttl_seconds} is longer than JWT_MAX_LIFETIME_SECONDS ({longest}); the API would refuse the token.",
            param_hint="'--ttl-seconds'",
        )
    with store.operator_transaction() as session:
        user = store.user_by_id(session, user_id)
    if not user.is_active:
        click.echo(f"Warning: user {user_id} is inactive; the API refuses its tokens until it is active.", err=True)
    click.echo(
        credentials.mint_jwt(
            user_id, settings.jwt_secret, ttl_seconds, audience=settings.jwt_audience, issuer=settings.jwt_issuer
        )
    )
