"""The local run (``make run``): every process on 127.0.0.1 only, a Redis that wants its
password, and a supervisor that starts a process again when it dies and stops the run
cleanly (exit 0, nothing left) on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from devtools.children import PROJECT_ROOT, stop_gracefully, wait_until
from devtools.servers import reachable
from shared import embedded
from tests.support.billing import TEST_JWT_SECRET


def outward_address() -> str:
    """This machine's address on its network (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))
        return probe.getsockname()[0]


def answers(host: str, port: int) -> bool:
    return reachable(host, port, timeout=1)


class LocalRun:
    def __init__(self, tmp_path: Path, database_url: str, broker_url: str):
        self.ports = {name: embedded.free_port() for name in ("web", "flower", "stripe")}
        self.log = tmp_path / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "STRIPE_", "PYTEST_", "PROMETHEUS_"))}
        env.update(
            AGENT700_VAR_DIR=str(tmp_path / "var"), DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url,
            JWT_SECRET=TEST_JWT_SECRET, FLOWER_BASIC_AUTH="operator:local-run-test", PORT=str(self.ports["web"]),
            FLOWER_PORT=str(self.ports["flower"]), STRIPE_API_BASE=f"http://127.0.0.1:{self.ports['stripe']}",
            STRIPE_METER_EVENTS_BASE=f"http://127.0.0.1:{self.ports['stripe']}", STRIPE_WEBHOOK_SECRET="whsec_local_run_test",
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "scripts/run_local.py"], cwd=PROJECT_ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pid_of(self, name: str) -> int:
        return int(re.findall(rf"run +\| {name} started \(pid (\d+)\)", self.output())[-1])

    def stop(self) -> None:
        stop_gracefully(self.process, grace=60)


@pytest.fixture
def local_run(committed_database, tmp_path, database_url, broker_url):
    run = LocalRun(tmp_path, database_url, broker_url)
    yield run
    run.stop()


@pytest.mark.slow
def test_the_local_run_listens_on_127_0_0_1_restarts_a_dead_process_and_stops_cleanly(local_run):
    wait_until(lambda: "=== Agent700 billing is up ===" in local_run.output(), 120, message=local_run.output)
    outward = outward_address()
    for name, port in local_run.ports.items():
        assert answers("127.0.0.1", port), name
        assert not answers(outward, port), f"{name} listens on {outward}:{port} too"

    worker = local_run.pid_of("worker")
    os.killpg(worker, signal.SIGKILL)
    wait_until(lambda: local_run.pid_of("worker") != worker, 30, message=local_run.output)
    assert re.search(r"worker exited with code -9; starting it again", local_run.output())

    curl = local_run.output().split("Record a usage event with the demo App Password:")[1]
    token = re.search(r"Bearer (app_a7_\S+)'", curl).group(1)
    body = re.search(r"-d '(\{.*\})'", curl).group(1)
    response = requests.post(
        f"http://127.0.0.1:{local_run.ports['web']}/api/billing/external-usage", data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=10,
    )
    assert response.status_code == 202
    event_id = response.json()["id"]
    stripe_url = f"http://127.0.0.1:{local_run.ports['stripe']}"
    wait_until(
        lambda: event_id in {e["identifier"] for e in requests.get(f"{stripe_url}/_local/meter_events", timeout=5).json()["data"]},
        60, message=local_run.output,
    )

    local_run.process.send_signal(signal.SIGTERM)
    assert local_run.process.wait(timeout=60) == 0
    time.sleep(0.5)
    for name, port in local_run.ports.items():
        assert not answers("127.0.0.1", port), f"{name} still listens after the run stopped"


def test_the_embedded_redis_wants_its_password(tmp_path):
    env = dict(os.environ, AGENT700_VAR_DIR=str(tmp_path / "var"))
    started = subprocess.run(
        [sys.executable, "-c", "from shared import embedded; print(embedded.start_redis_default())"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True,
    )
    url = started.stdout.strip().splitlines()[-1]
    try:
        password_file = tmp_path / "var" / "redis" / "password"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        assert f":{password_file.read_text().strip()}@" in url and "127.0.0.1" in url
        without = re.sub(r"//:[^@]+@", "//", url)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(without).xadd("billing:intake", {"event": "{}"})
        assert redis.Redis.from_url(url).ping()
        assert "requirepass" not in " ".join(
            subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
        )
    finally:
        embedded.stop_redis(tmp_path / "var" / "redis")


def _run_local_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_local", PROJECT_ROOT / "scripts" / "run_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_supervisor_gives_up_on_a_process_that_keeps_exiting_and_stops_the_rest(tmp_path, capsys):
    """Five exits within a minute: the run stops everything and exits 1, rather than
    restarting a process that cannot start (its output says which and why)."""
    supervisor = _run_local_module().Supervisor(dict(os.environ))
    marker = tmp_path / "steady-stopped"
    supervisor.add("broken", "echo cannot start; exit 3")
    supervisor.add("steady", f"trap 'touch {marker}; exit 0' TERM; while true; do sleep 0.1; done")

    assert supervisor.run() == 1

    output = capsys.readouterr().out
    assert output.count("broken exited with code 3; starting it again") == 4
    assert "broken exited with code 3, 5 times within a minute: stopping the run" in output
    assert "stopping steady" in output
    assert supervisor.processes["steady"].poll() is not None
    wait_until(marker.exists, 5)


def test_the_local_runs_secrets_are_generated_once_and_kept(tmp_path, monkeypatch):
    """The Flower password (and the JWT and webhook secrets) stay the same from one
    `make run` to the next: they are kept under var/, readable by their owner only."""
    monkeypatch.setattr(embedded, "VAR_DIR", tmp_path)
    for name in ("JWT_SECRET_FILE", "FLOWER_AUTH_FILE", "STRIPE_WEBHOOK_SECRET_FILE"):
        monkeypatch.setattr(embedded, name, tmp_path / getattr(embedded, name).name)
    secret_files = (embedded.JWT_SECRET_FILE, embedded.FLOWER_AUTH_FILE, embedded.STRIPE_WEBHOOK_SECRET_FILE)

    embedded.ensure_local_secrets()
    first = [embedded.local_secret(path) for path in secret_files]
    embedded.ensure_local_secrets()

    assert [embedded.local_secret(path) for path in secret_files] == first
    jwt_secret, flower_auth, webhook_secret = first
    assert re.fullmatch(r"operator:\S{12,}", flower_auth) and len(jwt_secret) >= 32 and webhook_secret.startswith("whsec_")
    assert all((path.stat().st_mode & 0o777) == 0o600 for path in secret_files)
