"""The local run: every Procfile process plus the local Stripe server, on the embedded default.

``make run`` calls this. With ``DATABASE_URL`` / ``CELERY_BROKER_URL`` unset it starts an
embedded PostgreSQL and Redis under ``var/``; when they are set it uses those. It applies
the migrations, seeds the demo data, starts web, worker, beat, flower and the local Stripe
server, and prints a ready-to-paste ``curl``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from honcho.manager import Manager

from shared import embedded, migrations
from shared.config import LOCAL_STRIPE_URL, get_settings

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOST = "127.0.0.1"
FLOWER_PORT = 5555


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
        STRIPE_API_BASE=settings.stripe_api_base,
        STRIPE_METER_EVENTS_BASE=settings.stripe_meter_events_base,
        FLOWER_BASIC_AUTH=settings.flower_basic_auth,
        PORT=str(settings.port),
        HOST=LOCAL_HOST,
        FLOWER_ADDRESS=LOCAL_HOST,
        FLOWER_PORT=str(FLOWER_PORT),
        PROMETHEUS_MULTIPROC_DIR=str(embedded.VAR_DIR / "prometheus"),
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def seed_demo(env: dict[str, str]) -> str:
    output = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingest_api", "seed-demo"],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return output.strip().splitlines()[-1]


def demo_ids(settings, app_password: str) -> tuple[str, str]:
    """The demo user (owner of the App Password) and the organization it is superadmin of."""
    import sqlalchemy as sa

    from ingest_api.credentials import lookup_prefix_of
    from shared import db, models

    with db.transaction(settings.database_url) as session:
        user_id = session.scalar(
            sa.select(models.AppPassword.user_id).where(
                models.AppPassword.lookup_prefix == lookup_prefix_of(app_password)
            )
        )
        organization_id = session.scalar(
            sa.select(models.OrganizationMembership.organization_id).where(
                models.OrganizationMembership.user_id == user_id
            )
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


def announce_when_ready(port: int, curl: str, flower_auth: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        print("web did not answer /healthz within 60 s; see its output above", file=sys.stderr)
        return
    print(
        "\n=== Agent700 billing is up ===\n"
        f"web:    http://127.0.0.1:{port}  (/healthz, /readyz, /metrics, /openapi.json)\n"
        f"flower: http://127.0.0.1:{FLOWER_PORT}  (basic auth {flower_auth}, kept in {embedded.FLOWER_AUTH_FILE})\n"
        f"stripe: {LOCAL_STRIPE_URL}/_local/meter_events  (what the local Stripe server received)\n\n"
        "Record a usage event with the demo App Password:\n\n"
        f"{curl}\n",
        flush=True,
    )


def main() -> int:
    if not (os.environ.get("DATABASE_URL") or os.environ.get("CELERY_BROKER_URL")):
        embedded.start_postgres()
        embedded.start_redis_default()
        embedded.ensure_local_secrets()
    settings = get_settings()
    # A fresh run counts from zero: files of earlier runs' processes would be summed in.
    shutil.rmtree(embedded.VAR_DIR / "prometheus", ignore_errors=True)
    migrations.upgrade(settings.database_url)
    env = child_environment(settings)
    app_password = seed_demo(env)

    manager = Manager()
    for name, command in procfile_processes().items():
        manager.add_process(name, command, env=env, cwd=str(ROOT))
    if settings.stripe_api_base == LOCAL_STRIPE_URL:
        manager.add_process(
            "stripe", f"{shlex.quote(sys.executable)} -m local_stripe --host {LOCAL_HOST} --port 12111", env=env, cwd=str(ROOT)
        )
    curl = demo_curl(settings.port, app_password, *demo_ids(settings, app_password))
    threading.Thread(
        target=announce_when_ready, args=(settings.port, curl, env["FLOWER_BASIC_AUTH"]), daemon=True
    ).start()
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
