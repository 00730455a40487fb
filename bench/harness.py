"""What the benchmarks share: a database and Redis of their own, seeded billing data,
gunicorn processes with the project's shared/gunicorn_config.py, and the load tools (wrk, hey).

The servers are found as the tests find theirs (``devtools.servers``); every process is a
``devtools.children.Child`` (its own process group, logging under var/, stopped with
its group), as the tests and the soak start theirs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from devtools.children import Child, http_answers
from devtools.servers import migrated_database, postgres_server_url, redis_server_url
from shared import embedded

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var"
JWT_SECRET = "bench-secret-that-is-at-least-32-bytes-long"


def ensure_load_tools() -> None:
    """wrk (closed-loop maximum rate) and hey (fixed-rate latency), from Debian's packages."""
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})


@dataclass
class Environment:
    database_url: str
    broker_url: str
    env: dict[str, str]
    stripe_url: str  # the local Stripe-compatible server of this run


@contextlib.contextmanager
def database():
    """A fresh database on the machine's PostgreSQL, migrated to head (its URL); dropped at the end."""
    with migrated_database(postgres_server_url(), "a700_bench_") as database_url:
        yield database_url


@contextlib.contextmanager
def environment(redis_db: int = 13, *, durable: bool = True):
    """A fresh database on the machine's PostgreSQL, migrated, a Redis, and the local Stripe server.

    ``durable``: a redis-server of the run's own with the persistence the README
    prescribes (``shared.embedded.redis_settings``: AOF on, ``appendfsync always``), its
    files under var/, so the figures are those of what production runs. Otherwise the
    machine's Redis, whatever its persistence (here: AOF off), for comparison.
    """
    with (
        database() as database_url,
        (_durable_redis() if durable else _machine_redis(redis_db)) as broker_url,
        _services(database_url, broker_url) as env,
    ):
        yield env


@contextlib.contextmanager
def _durable_redis():
    LOGS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=LOGS, prefix="bench-redis-") as directory:
        port = embedded.free_port()
        server = child("redis", embedded.redis_foreground_argv(Path(directory), port), dict(os.environ)).start()
        try:
            server.wait_answering(lambda: embedded.port_open(port), 30)
            yield embedded.redis_url_for(port, None)
        finally:
            server.stop(grace=30)


@contextlib.contextmanager
def _machine_redis(redis_db: int):
    broker_url = f"{redis_server_url().rsplit('/', 1)[0]}/{redis_db}"
    redis.Redis.from_url(broker_url).flushdb()
    try:
        yield broker_url
    finally:
        redis.Redis.from_url(broker_url).flushdb()


def redis_persistence(env: Environment) -> str:
    """The Redis's persistence as it says (CONFIG GET), to label the figures with."""
    broker = redis.Redis.from_url(env.broker_url, decode_responses=True)
    try:
        settings = broker.config_get("appendonly") | broker.config_get("appendfsync")
    finally:
        broker.close()
    if settings["appendonly"] != "yes":
        return "Redis AOF off"
    return f"Redis AOF on, appendfsync {settings['appendfsync']}"


def accept_calls(env: Environment) -> tuple[int, int]:
    """(accept-script calls Redis has run, entries in the intake) so far: no recorder runs
    in the ingest benchmark, so every accepted event stays in the intake."""
    from shared import intake

    broker = redis.Redis.from_url(env.broker_url, decode_responses=True)
    try:
        calls = broker.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        return int(calls), broker.xlen(intake.STREAM)
    finally:
        broker.close()


@contextlib.contextmanager
def _services(database_url: str, broker_url: str):
    stripe_port = embedded.free_port()
    stripe_url = f"http://127.0.0.1:{stripe_port}"
    env = dict(os.environ) | {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "JWT_SECRET": JWT_SECRET,
        "STRIPE_API_KEY": "sk_test_bench",
        "STRIPE_API_BASE": stripe_url,
        "STRIPE_METER_EVENTS_BASE": stripe_url,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PORT", None)
    stripe = child("stripe", [sys.executable, "-m", "local_stripe", "--port", str(stripe_port)], env).start()
    try:
        stripe.wait_answering(lambda: http_answers(f"{stripe_url}/_local/faults"), 30)
        yield Environment(database_url, broker_url, env, stripe_url)
    finally:
        stripe.stop(grace=30)


def child(name: str, argv: list[str], env: dict[str, str]) -> Child:
    """A process of the benchmark in its own group, logging to ``var/bench-NAME.log``."""
    return Child(name, argv, env, LOGS / f"bench-{name}.log", cwd=ROOT)


def flask_cli(env: Environment, *args: str) -> str:
    output = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ingest_api", *args],
        env=env.env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return output.strip().splitlines()[-1]


@dataclass
class Caller:
    app_password: str
    jwt: str
    user_id: str
    organization_ids: list[str]


def seed(env: Environment, organizations: int = 1) -> Caller:
    """The Stripe account (meter, customers), organizations with those customers, one
    superadmin, the service and a price."""
    flask_cli(env, "stripe", "ensure-meter")
    user_id = flask_cli(env, "users", "create", "--email", "bench@agent700.example")
    organization_ids = []
    for index in range(organizations):
        request = urllib.request.Request(
            f"{env.stripe_url}/_local/customers", data=json.dumps({"id": f"cus_bench{index}"}).encode(),
            method="POST", headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        org = flask_cli(env, "orgs", "create", "--name", f"bench-{index}", "--stripe-customer-id", f"cus_bench{index}")
        flask_cli(env, "members", "add", "--user", user_id, "--org", org, "--role", "superadmin")
        organization_ids.append(org)
    flask_cli(env, "services", "add", "--name", "transcription")
    flask_cli(
        env, "prices", "set", "--model", "gpt-4o-mini", "--input-per-token", "0.00000015",
        "--output-per-token", "0.0000006", "--agent700-input-per-token", "0.0000003",
        "--agent700-output-per-token", "0.0000012", "--effective-from", "2024-01-01T00:00:00Z",
    )
    app_password = flask_cli(env, "app-passwords", "create", "--user", user_id, "--name", "bench")
    jwt = flask_cli(env, "tokens", "mint", "--user", user_id, "--ttl-seconds", "3600")
    return Caller(app_password, jwt, user_id, organization_ids)


def event_body(caller: Caller, organization_index: int = 0) -> dict:
    return {
        "user_id": caller.user_id,
        "organization_id": caller.organization_ids[organization_index % len(caller.organization_ids)],
        "model_name": "gpt-4o-mini",
        "input_tokens": 1200,
        "output_tokens": 350,
        "service_name": "transcription",
    }


@contextlib.contextmanager
def gunicorn(env: Environment, app: str, port: int):
    """The web process exactly as the Procfile runs it (shared/gunicorn_config.py), on ``port``."""
    web = child(
        f"gunicorn-{port}", [sys.executable, "-m", "gunicorn", "--config", "python:shared.gunicorn_config", app],
        env.env | {"PORT": str(port)},
    ).start()
    try:
        web.wait_answering(lambda: http_answers(f"http://127.0.0.1:{port}/", any_status=True), 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.stop(grace=30)


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = io.open("{body}"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{authorization}"
done = function(summary, latency, requests)
  local statuses = 0
  io.write(string.format("JSON {{\\"requests\\": %d, \\"seconds\\": %f, \\"non2xx\\": %d, \\"errors\\": %d, \\"p50_ms\\": %f, \\"p99_ms\\": %f}}\\n",
    summary.requests, summary.duration / 1e6, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass
class MaxRate:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int


# A new Idempotency-Key on every request (wrk runs one thread here), unique across runs.
_WRK_KEYED = """
local counter, prefix = 0, "{prefix}"
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  return wrk.format()
end
"""


def max_rate(
    url: str, body: dict, authorization: str, *, seconds: int = 10, connections: int = 16, keyed: bool = False
) -> MaxRate:
    """Closed-loop load with wrk: the most requests per second the server answers;
    ``keyed``: each request a new event with an Idempotency-Key of its own."""
    result = _wrk(url, body, authorization, _WRK_KEYED.format(prefix=uuid.uuid4().hex) if keyed else "", seconds, connections)
    return MaxRate(
        result["requests"] / result["seconds"], result["p50_ms"], result["p99_ms"], result["non2xx"], result["errors"]
    )


@dataclass
class FixedRate:
    rate: float
    achieved: float
    p50_ms: float
    p99_ms: float
    non2xx: int


def fixed_rate(url: str, body: dict, authorization: str, rate: float, *, seconds: int = 10, connections: int = 8) -> FixedRate:
    """Paced load with wrk: each connection waits a jittered 1/rate·connections between
    requests (wrk's ``delay()``), so the offered rate is ``rate`` without bursts; the
    latency of every request is measured without the pause."""
    pause_ms = 1000.0 * connections / rate
    for _calibration in range(2):
        # The pause comes on top of each response time; correct it so the achieved rate
        # is the one asked for.
        achieved = _paced(url, body, authorization, pause_ms, 3, connections)[0]
        pause_ms *= achieved / rate
    achieved, result = _paced(url, body, authorization, pause_ms, seconds, connections)
    return FixedRate(rate, achieved, result["p50_ms"], result["p99_ms"], result["non2xx"])


def _paced(url, body, authorization, pause_ms, seconds, connections):
    result = _wrk(url, body, authorization, f"\nfunction delay() return math.random() * {2 * pause_ms:.3f} end\n",
                  seconds, connections)
    return result["requests"] / result["seconds"], result


def _wrk(url: str, body: dict, authorization: str, extra_lua: str, seconds: int, connections: int) -> dict:
    """One wrk run of the POST script (plus ``extra_lua``): its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(body))
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT.format(body=body_file, authorization=authorization) + extra_lua)
        output = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), url],
            check=True, capture_output=True, text=True,
        ).stdout
    return json.loads(re.search(r"^JSON (.*)$", output, re.M).group(1))
