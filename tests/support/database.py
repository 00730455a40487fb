"""One test's database work in one transaction, rolled back at its end.

SQLAlchemy 2's recipe for joining sessions into an external transaction: one connection,
an outer transaction begun on it, and sessions bound to it with
``join_transaction_mode="create_savepoint"``, so that the code under test committing
(``shared.db.transaction``, ``session.commit()``) releases a savepoint instead, and the
rollback at the end undoes everything. ``RolledBack`` hands out those sessions, and an
engine stand-in whose ``connect()``/``begin()`` blocks are savepoints on the same
connection, in place of ``shared.db.session_factory`` and ``shared.db.engine_for`` for
the test's database URL (tests/conftest.py patches them in).

Everything runs on one connection in one thread and sees its own uncommitted work: a test
whose code runs in other processes or threads, or that needs real concurrency between
connections, uses the committed (truncated) database instead (``committed_database``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import orm


class _SavepointConnection:
    """The connection of one ``engine.connect()`` block: inside a savepoint, which
    ``commit()`` releases (and begins anew), ``rollback()`` and closing roll back."""

    def __init__(self, connection: sa.Connection):
        self._connection = connection
        self._savepoint = connection.begin_nested()

    def commit(self) -> None:
        self._savepoint.commit()
        self._savepoint = self._connection.begin_nested()

    def rollback(self) -> None:
        self._savepoint.rollback()
        self._savepoint = self._connection.begin_nested()

    def close(self) -> None:
        if self._savepoint.is_active:
            self._savepoint.rollback()

    def __enter__(self) -> _SavepointConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._connection, name)


class _SavepointEngine:
    """What ``shared.db.engine_for`` returns for the test's database: each connection is
    a savepoint on the test's one connection."""

    def __init__(self, connection: sa.Connection):
        self._connection = connection

    def connect(self) -> _SavepointConnection:
        return _SavepointConnection(self._connection)

    @contextlib.contextmanager
    def begin(self) -> Iterator[_SavepointConnection]:
        with self.connect() as connection:
            yield connection
            connection.commit()

    def dispose(self, close: bool = True) -> None:
        """Nothing to drop: the connection is the test's."""

    def __getattr__(self, name: str):
        return getattr(self._connection.engine, name)


class RolledBack:
    """The test's transaction on ``database_url`` (on a connection of ``engine``): its
    ``engine_for`` and ``session_factory`` stand in for ``shared.db``'s for that URL."""

    def __init__(self, engine: sa.Engine, database_url: str):
        self.database_url = database_url
        self.connection = engine.connect()
        self._outer = self.connection.begin()
        self.engine = _SavepointEngine(self.connection)
        self.sessions = orm.sessionmaker(
            bind=self.connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )

    def roll_back(self) -> None:
        """Undo everything the test did, and give the connection back."""
        self._outer.rollback()
        self.connection.close()
