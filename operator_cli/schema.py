"""``db upgrade`` / ``db downgrade``: the schema migrations."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from shared import migrations

db_cli = AppGroup("db", help="Schema migrations.")


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the schema migrations."""
    migrations.upgrade(current_app.config["SETTINGS"].database_url, revision)
    click.echo(f"database at {revision}")


@db_cli.command("downgrade")
@click.option("--revision", default="-1", show_default=True)
def db_downgrade(revision: str) -> None:
    """Revert schema migrations (default: the last one)."""
    migrations.downgrade(current_app.config["SETTINGS"].database_url, revision)
    click.echo(f"database at {revision}")
