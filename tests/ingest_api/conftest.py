"""The ingest endpoint's fixtures: the billable world with a test client of the app
(``billing``: ``tests.support.api_caller.Billing``, one organization, ``gpt-4o-mini``), the
SQL statements the app sends (``statements``), and the app with changed settings
(``reconfigure``). The helpers the tests call are in ``tests.support``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.api_caller import Billing
from tests.support.billing import build_world


@pytest.fixture
def billing(client, factory, broker_url) -> Billing:
    world = build_world(factory, password_name="ingest")
    return Billing(**vars(world), client=client, broker_url=broker_url)




# What a rolled-back test's connection adds around each of the app's blocks.
_SCAFFOLDING = re.compile(r"(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) \w+")


@pytest.fixture
def statements():
    """The SQL statements the app sends from now on (without the savepoints a rolled-back
    test wraps them in). Listened for on every engine: the test's database is reached
    through its one connection, not through the engine ``shared.db.engine_for`` makes."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not _SCAFFOLDING.fullmatch(statement):
            sent.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


@pytest.fixture
def reconfigure(billing, settings):
    """``reconfigure(**changes)``: a new app with those settings changed, and the billing
    world as its client sees it (``(billing, app)``)."""
    import dataclasses

    from ingest_api import create_app

    def build(**changes: Any):
        app = create_app(settings.replace(**changes))
        app.config["TESTING"] = True
        return dataclasses.replace(billing, client=app.test_client()), app

    return build


@pytest.fixture
def document(client) -> dict:
    """The app's OpenAPI document, as ``GET /openapi.json`` serves it."""
    response = client.get("/openapi.json")  # no credential needed to read the document
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()
