"""``services add`` / ``services list``: the external services usage is recorded for."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from operator_cli import output, parameters, store
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


@services_cli.command("list")
@output.json_option
def list_services(as_json: bool) -> None:
    """List the services callers may name."""
    with store.operator_transaction() as session:
        services = session.scalars(sa.select(models.Service).order_by(models.Service.name)).all()
    if as_json:
        output.print_json(
            {
                "services": [
                    {"id": str(s.id), "name": s.name, "created_at": output.time_text(s.created_at)} for s in services
                ]
            }
        )
        return
    if not services:
        click.echo("No services.")
        return
    output.print_table(
        ["ID", "CREATED_AT", "NAME"], [[str(s.id), output.time_text(s.created_at), s.name] for s in services]
    )
