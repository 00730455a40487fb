"""The database engine and sessions: one engine per process and URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import orm

_engines: dict[str, sa.Engine] = {}
_session_factories: dict[str, orm.sessionmaker[orm.Session]] = {}


def engine_for(database_url: str) -> sa.Engine:
    engine = _engines.get(database_url)
    if engine is None:
        engine = _engines[database_url] = sa.create_engine(
            database_url,
            pool_pre_ping=True,  # survive a PostgreSQL restart without failing the next caller
            # No overflow: an overflow connection is closed when it is given back, so a
            # burst above the pool's size opened (forked a PostgreSQL backend) and closed
            # a connection per query; under a web process's concurrent keyed requests that
            # cut their rate by three quarters. Waiting for one of ten open ones is cheaper.
            pool_size=10,
            max_overflow=0,
            pool_timeout=5,
            connect_args={"connect_timeout": 3, "application_name": "agent700-billing"},
        )
    return engine


def session_factory(database_url: str) -> orm.sessionmaker[orm.Session]:
    factory = _session_factories.get(database_url)
    if factory is None:
        factory = _session_factories[database_url] = orm.sessionmaker(
            engine_for(database_url), expire_on_commit=False
        )
    return factory


@contextlib.contextmanager
def transaction(database_url: str) -> Iterator[orm.Session]:
    """A session inside one transaction: committed on success, rolled back on error."""
    with session_factory(database_url).begin() as session:
        yield session


def dispose_engines() -> None:
    """Drop inherited pooled connections in a child after ``fork()`` (gunicorn, Celery)."""
    for engine in _engines.values():
        engine.dispose(close=False)
