"""The PostgreSQL and Redis servers a run uses: the configured ones (``TEST_DATABASE_URL``
/ ``DATABASE_URL``, ``TEST_BROKER_URL`` / ``CELERY_BROKER_URL``) when set, else this
machine's defaults on 127.0.0.1 when they answer, else None (the caller starts embedded
ones); and a migrated database of a run's own on such a server. Used by tests/conftest.py
and bench/harness.py."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from shared import migrations


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_server_url() -> str | None:
    """An admin URL (database ``postgres``) of the configured or this machine's PostgreSQL."""
    for name in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            url = sa.make_url(os.environ[name]).set(drivername="postgresql+psycopg2")
            return url.set(database="postgres").render_as_string(hide_password=False)
    if reachable("127.0.0.1", 5432):
        return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    return None


def redis_server_url() -> str | None:
    """The configured or this machine's Redis."""
    for name in ("TEST_BROKER_URL", "CELERY_BROKER_URL"):
        if os.environ.get(name):
            return os.environ[name]
    if reachable("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    return None


@contextlib.contextmanager
def migrated_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new database ``<prefix><random>`` on the server of ``server_url`` (an admin URL),
    migrated to head; its URL. Dropped at the end, connections or not."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            migrations.upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
