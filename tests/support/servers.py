"""The PostgreSQL and Redis servers a run uses: the configured ones (``TEST_DATABASE_URL``
/ ``DATABASE_URL``, ``TEST_BROKER_URL`` / ``CELERY_BROKER_URL``) when set, else this
machine's defaults on 127.0.0.1 when they answer, else None (the caller starts embedded
ones). Used by tests/conftest.py and bench/harness.py."""

from __future__ import annotations

import os
import socket

import sqlalchemy as sa


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
