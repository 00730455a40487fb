"""What the operations suites share: the Procfile's processes as real subprocesses
(gunicorn, the Celery worker with beat, Flower), a Redis and a PostgreSQL a test may stop,
the billable world (``tests.support.billing.build_world``), and JSON log files as the tests read them.

Every process is stopped at teardown, whatever the test did; every wait is a bounded
poll of a condition, never a fixed sleep.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shared import db
from shared.config import Settings
from tests.processes import (
    FlowerProcess,
    GunicornProcess,
    PrivateRedis,
    private_postgres_server,
)
from tests.support.billing import World, build_world

# Long enough for a process start (imports, beat's first tick) and a drain-and-report
# round on a busy 2-core machine shared with other tests.
SETTLE_SECONDS = 90


@pytest.fixture
def start_gunicorn(committed_database, stripe, tmp_path):
    """``start_gunicorn(settings, workers=N, **env)``: the web process, serving; stopped at teardown."""
    servers: list[GunicornProcess] = []

    def start(settings: Settings, *, workers: int = 2, **extra_env: str) -> GunicornProcess:
        server = GunicornProcess(settings, stripe.url, tmp_path / f"web-{len(servers)}", workers=workers, extra_env=extra_env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def flower_process(committed_database, stripe, tmp_path):
    """``flower_process(settings, **env)``: a FlowerProcess, not started; stopped at teardown."""
    processes: list[FlowerProcess] = []

    def make(settings: Settings, **extra_env: str) -> FlowerProcess:
        process = FlowerProcess(settings, stripe.url, tmp_path / f"flower-{len(processes)}", extra_env)
        processes.append(process)
        return process

    yield make
    for process in processes:
        process.stop()


@pytest.fixture
def private_redis(tmp_path):
    """A running Redis of the test's own (AOF off), killed at teardown."""
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def private_postgres():
    """A running embedded PostgreSQL of the test's own, stopped and removed at teardown."""
    with private_postgres_server() as postgres:
        yield postgres
        db.engine_for(postgres.admin_url).dispose()


@pytest.fixture
def metrics_dir(tmp_path) -> Path:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the processes of one test."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


# --- a billable world -----------------------------------------------------------------------


@pytest.fixture
def world(factory) -> World:
    return build_world(factory)


# --- HTTP against a real server -------------------------------------------------------------


def http(method: str, url: str, *, json_body=None, headers: dict[str, str] | None = None, timeout: float = 30):
    """(status, headers, parsed JSON body or raw text) of one request on a new connection."""
    data = None
    headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, error.headers, error.read()
    try:
        return status, response_headers, json.loads(raw)
    except ValueError:
        return status, response_headers, raw.decode(errors="replace")


# --- JSON log lines -------------------------------------------------------------------------


def json_lines(path: Path, *, skip: tuple[str, ...] = ()) -> list[dict]:
    """Every line of a log file parsed as a JSON object; a line that is not one fails the
    test (blank lines and lines starting with one of ``skip`` excepted)."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith(skip):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not a JSON line: {line!r}") from None
        assert isinstance(record, dict), f"{path.name}:{number} is not a JSON object: {line!r}"
        records.append(record)
    return records


def get_within(client, path: str, seconds: float):
    """``GET path`` through the Flask test client, asked from a thread so that a hanging
    answer fails the test within ``3 × seconds`` (a C call blocked on a socket would not
    even let pytest-timeout interrupt it), and fails it too if it took ``seconds`` or more.
    The response and how long it took."""
    answer = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answer.append(client.get(path)), daemon=True)
    thread.start()
    thread.join(seconds * 3)
    elapsed = time.monotonic() - started
    assert answer, f"{path} did not answer within {elapsed:.0f}s"
    assert elapsed < seconds, f"{path} took {elapsed:.1f}s"
    return answer[0], elapsed
