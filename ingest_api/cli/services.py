"""``services add``: the external services usage is recorded for."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ingest_api.cli import parameters, store
from shared import models

services_cli = AppGroup("services", help="External services (the API's service_name).")


@services_cli.command("add")
@click.option("--name", required=True, type=parameters.LABEL, help="Unique; callers send it as service_name.")
def add_service(name: str) -> None:
    """Add a service; print its id."""
    duplicate_name = {"uq_services_name": f"A service named {name!r} already exists."}
    with store.operator_transaction(duplicate_name) as session:
        service = models.Service(name=name)
        session.add(service)
        session.flush()
    click.echo(service.id)
