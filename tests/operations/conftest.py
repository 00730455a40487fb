"""The operations suites' fixtures: the Procfile's processes as real subprocesses
(gunicorn and Flower; ``tests.support.service_processes``), a Redis of the test's own it
may stop, and a metrics directory. The worker (``start_worker``), the world (``world``) and
a PostgreSQL of the test's own (``private_postgres``) are the suite's (tests/conftest.py).

Every process is stopped at teardown, whatever the test did; every wait is a bounded
poll of a condition, never a fixed sleep.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from tests.support.service_processes import FlowerProcess, GunicornProcess, stopped_at_the_end


@pytest.fixture
def start_gunicorn(committed_database, stripe, tmp_path):
    """``start_gunicorn(settings, workers=N, **env)``: the web process, serving; stopped at teardown."""
    with stopped_at_the_end() as servers:

        def start(settings: Settings, *, workers: int = 2, **extra_env: str) -> GunicornProcess:
            server = GunicornProcess(settings, stripe.url, tmp_path / f"web-{len(servers)}", workers=workers, extra_env=extra_env)
            servers.append(server)
            return server.start()

        yield start


@pytest.fixture
def flower_process(committed_database, stripe, tmp_path):
    """``flower_process(settings, **env)``: a FlowerProcess, not started; stopped at teardown."""
    with stopped_at_the_end() as processes:

        def make(settings: Settings, **extra_env: str) -> FlowerProcess:
            process = FlowerProcess(settings, stripe.url, tmp_path / f"flower-{len(processes)}", extra_env)
            processes.append(process)
            return process

        yield make




@pytest.fixture
def metrics_dir(tmp_path) -> Path:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the processes of one test."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory

