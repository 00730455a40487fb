"""Operator commands: ``flask --app ingest_api <command>``.

Each command that creates or changes something prints its id (or token) alone on its last
line of standard output, so scripts can capture it (``ID=$(flask ... | tail -1)``); anything
meant for a human goes to standard error. Listings print tables (``output``), or one JSON
document with ``--json``. Errors are one line on standard error with a non-zero exit
code. One module per command group; shared helpers in ``store``, ``parameters`` and
``output``.
"""

from __future__ import annotations

from flask import Flask

from ingest_api.cli import (
    app_passwords,
    demo,
    memberships,
    organizations,
    prices,
    schema,
    services,
    stripe_reconcile,
    tokens,
    usage,
    users,
)


def register(app: Flask) -> None:
    for command in (
        schema.db_cli,
        demo.seed_demo,
        organizations.orgs_cli,
        users.users_cli,
        memberships.members_cli,
        app_passwords.app_passwords_cli,
        tokens.tokens_cli,
        services.services_cli,
        prices.prices_cli,
        usage.usage_cli,
        stripe_reconcile.stripe_cli,
    ):
        app.cli.add_command(command)
