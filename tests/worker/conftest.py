"""The pipeline's fixtures.

* A billable world (``world``: ``tests.support.billing.build_world_with_every_price``, prices
  for the three models of ``PRICES``); ``World.event()`` builds the queue message the edge
  would have accepted.
* A client of this run's Redis as the worker uses it (``broker``).
* A private embedded PostgreSQL a test may restart (``private_postgres``), and
  ``private_settings`` on a migrated database of it.

The expected costs, ``Load`` and ``assert_billed_exactly_once`` are in
``tests.support.expected_bills``.
"""

from __future__ import annotations

import pytest
import redis

from shared import db, embedded, migrations
from shared.config import Settings
from tests.support.billing import World, build_world_with_every_price
from tests.support.intake_stream import redis_client
from tests.support.service_processes import private_postgres_server

# --- the billable world -------------------------------------------------------------------




@pytest.fixture
def world(factory) -> World:
    return build_world_with_every_price(factory)




@pytest.fixture
def broker(settings) -> redis.Redis:
    """A client of this run's Redis database, as the worker uses it (decoded strings)."""
    client = redis_client(settings.broker_url)
    yield client
    client.close()


# --- the database as the tests read it ----------------------------------------------------






# --- a load of events through the batch endpoint, and what it must cost --------------------








# --- a PostgreSQL of the test's own, which it may restart -----------------------------------


@pytest.fixture
def private_postgres():
    """An embedded PostgreSQL in a temporary directory, stopped and removed at teardown."""
    with private_postgres_server() as postgres:
        yield postgres


@pytest.fixture
def private_settings(private_postgres, settings) -> Settings:
    """``settings`` on a migrated database of the private PostgreSQL."""
    embedded.ensure_database(private_postgres.admin_url, "a700_pipeline")
    url = private_postgres.url("a700_pipeline")
    migrations.upgrade(url)
    yield settings.replace(database_url=url)
    db.engine_for(url).dispose()
