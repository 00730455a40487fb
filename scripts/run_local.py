"""The local run: every Procfile process plus the local Stripe server, supervised.

``make run`` calls this. With ``DATABASE_URL`` / ``CELERY_BROKER_URL`` unset it starts the
embedded PostgreSQL and Redis under ``var/`` (``make stop`` stops them); when they are
set it uses those. It applies the migrations, seeds the demo data, sets up the local
Stripe account (the billing meter, the demo customer, the webhook destination), starts
web, worker, beat, flower and the local Stripe server on 127.0.0.1 only, and prints a
ready-to-paste ``curl``.

A process that exits is started again (the console says so, with its exit code); one that
keeps exiting (``GIVE_UP_AFTER`` times within a minute) stops the run with exit code 1.
Ctrl-C or SIGTERM stops every process and exits 0. Each process runs in a session of its
own, so its children (gunicorn and Celery workers) stop with it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path

from shared import embedded, migrations
from shared.config import LOCAL_STRIPE_API_KEY, LOCAL_STRIPE_URL, get_settings

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOST = "127.0.0.1"
FLOWER_PORT = int(os.environ.get("FLOWER_PORT") or 5555)
DEMO_STRIPE_CUSTOMER_ID = "cus_demo_agent700"
GIVE_UP_AFTER = 5  # exits within RESTART_WINDOW_SECONDS
RESTART_WINDOW_SECONDS = 60
STOP_GRACE_SECONDS = 30


def procfile_processes() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def child_environment(settings) -> dict[str, str]:
    """Pin what this run resolved, so every child uses the same servers and secrets, and
    listens on 127.0.0.1 only."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL=settings.broker_url,
        JWT_SECRET=settings.jwt_secret,
        STRIPE_API_KEY=settings.stripe_api_key,
        STRIPE_API_BASE=settings.stripe_api_base,
        STRIPE_METER_EVENTS_BASE=settings.stripe_meter_events_base,
        FLOWER_BASIC_AUTH=settings.flower_basic_auth or "",
        PORT=str(settings.port),
        HOST=LOCAL_HOST,
        FLOWER_ADDRESS=LOCAL_HOST,
        FLOWER_PORT=str(FLOWER_PORT),
        PROMETHEUS_MULTIPROC_DIR=str(embedded.VAR_DIR / "prometheus"),
        PYTHONUNBUFFERED="1",
    )
    if settings.stripe_webhook_secret:
        env["STRIPE_WEBHOOK_SECRET"] = settings.stripe_webhook_secret
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def flask_cli(env: dict[str, str], *args: str) -> str:
    output = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingest_api", *args],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return output.strip().splitlines()[-1]


def post_json(url: str, document: dict) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def wait_for(url: str, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.2)
    return False


def set_up_local_stripe(settings, env: dict[str, str]) -> None:
    """The local Stripe account as an operator sets up a real one: the billing meter
    (``stripe ensure-meter``), the demo organization's customer, and the event
    destination for the meters' asynchronous error reports (this web's webhook)."""
    if not wait_for(f"{settings.stripe_api_base}/_local/faults"):
        raise SystemExit("the local Stripe server did not start")
    flask_cli(env, "stripe", "ensure-meter")
    post_json(f"{settings.stripe_api_base}/_local/customers", {"id": DEMO_STRIPE_CUSTOMER_ID})
    post_json(
        f"{settings.stripe_api_base}/_local/faults",
        {
            "webhook_url": f"http://{LOCAL_HOST}:{settings.port}/api/stripe/events",
            "webhook_secret": settings.stripe_webhook_secret,
        },
    )


def demo_ids(settings, app_password: str) -> tuple[str, str]:
    """The demo user (owner of the App Password) and the organization it is superadmin of."""
    import sqlalchemy as sa

    from ingest_api.credentials import lookup_prefix_of
    from shared import db, models

    with db.transaction(settings.database_url) as session:
        user_id = session.scalar(
            sa.select(models.AppPassword.user_id).where(models.AppPassword.lookup_prefix == lookup_prefix_of(app_password))
        )
        organization_id = session.scalar(
            sa.select(models.OrganizationMembership.organization_id).where(models.OrganizationMembership.user_id == user_id)
        )
    return str(user_id), str(organization_id)


def demo_curl(port: int, app_password: str, user_id: str, organization_id: str) -> str:
    body = (
        f'{{"user_id": "{user_id}", "organization_id": "{organization_id}", "model_name": "gpt-4o-mini", '
        '"input_tokens": 1200, "output_tokens": 350, "service_name": "transcription"}'
    )
    return (
        f"curl -sS -X POST http://127.0.0.1:{port}/api/billing/external-usage \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + app_password)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


class Supervisor:
    """Runs named commands, prefixes their output, and starts again one that exits."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.commands: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.exits: dict[str, deque[float]] = {}
        self.stopping = threading.Event()
        self.failed: str | None = None
        self._lock = threading.Lock()

    def add(self, name: str, command: str) -> None:
        self.commands[name] = command
        self.exits[name] = deque(maxlen=GIVE_UP_AFTER)

    def say(self, name: str, line: str) -> None:
        width = max(map(len, [*self.commands, "run"]))
        with self._lock:
            print(f"{dt.datetime.now():%H:%M:%S} {name.ljust(width)} | {line}", flush=True)

    def start(self, name: str) -> None:
        process = subprocess.Popen(
            self.commands[name], shell=True, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True, errors="replace",
        )
        self.processes[name] = process
        self.say("run", f"{name} started (pid {process.pid})")
        threading.Thread(target=self._relay, args=(name, process), daemon=True).start()

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        with process.stdout:  # closed at its end: a process started again has a pipe of its own
            for line in process.stdout:
                self.say(name, line.rstrip("\n"))

    def run(self) -> int:
        for name in self.commands:
            self.start(name)
        while not self.stopping.wait(0.5):
            for name, process in list(self.processes.items()):
                code = process.poll()
                if code is None or self.stopping.is_set():
                    continue
                now = time.monotonic()
                self.exits[name].append(now)
                recent = [at for at in self.exits[name] if now - at < RESTART_WINDOW_SECONDS]
                if len(recent) >= GIVE_UP_AFTER:
                    self.say("run", f"{name} exited with code {code}, {len(recent)} times within a minute: stopping the run")
                    self.failed = name
                    self.stopping.set()
                    break
                self.say("run", f"{name} exited with code {code}; starting it again")
                self.start(name)
        self.stop_all()
        return 1 if self.failed else 0

    def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                self.say("run", f"stopping {name}")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left


def main() -> int:
    if not (os.environ.get("DATABASE_URL") or os.environ.get("CELERY_BROKER_URL")):
        embedded.start_postgres()
        embedded.start_redis_default()
        embedded.ensure_local_secrets()
    if not os.environ.get("STRIPE_API_KEY"):
        # The local run bills into its own Stripe server unless given a key, whichever
        # PostgreSQL and Redis it uses (outside the local default run the settings would
        # refuse a missing key).
        os.environ["STRIPE_API_KEY"] = LOCAL_STRIPE_API_KEY
        for name in ("STRIPE_API_BASE", "STRIPE_METER_EVENTS_BASE"):
            os.environ[name] = os.environ.get(name) or LOCAL_STRIPE_URL
    settings = get_settings()
    migrations.upgrade(settings.database_url)
    # A fresh run counts from zero: files of earlier runs' processes would be summed in.
    shutil.rmtree(embedded.VAR_DIR / "prometheus", ignore_errors=True)
    env = child_environment(settings)
    app_password = flask_cli(env, "seed-demo")

    supervisor = Supervisor(env)
    for name, command in procfile_processes().items():
        supervisor.add(name, command)
    local_stripe = settings.stripe_api_key == LOCAL_STRIPE_API_KEY
    if local_stripe:
        port = urllib.parse.urlsplit(settings.stripe_api_base).port
        supervisor.add(
            "stripe", f"{shlex.quote(sys.executable)} -m local_stripe --host {LOCAL_HOST} --port {port} --validation-delay-seconds 2"
        )

    def stop(signum, _frame):
        supervisor.say("run", f"{signal.Signals(signum).name} received: stopping")
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def announce() -> None:
        if local_stripe:
            set_up_local_stripe(settings, env)
        if not wait_for(f"http://127.0.0.1:{settings.port}/healthz"):
            supervisor.say("run", "web did not answer /healthz within 60 s; see its output above")
            return
        curl = demo_curl(settings.port, app_password, *demo_ids(settings, app_password))
        print(
            "\n=== Agent700 billing is up ===\n"
            f"web:    http://127.0.0.1:{settings.port}  (/healthz, /readyz, /metrics, /openapi.json, /docs)\n"
            f"flower: http://127.0.0.1:{FLOWER_PORT}  (basic auth {settings.flower_basic_auth}, kept in "
            f"{embedded.FLOWER_AUTH_FILE})\n"
            + (f"stripe: {settings.stripe_api_base}/_local/meter_events  (what the local Stripe server counted)\n" if local_stripe else "")
            + f"\nRecord a usage event with the demo App Password:\n\n{curl}\n",
            flush=True,
        )

    threading.Thread(target=announce, daemon=True).start()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
