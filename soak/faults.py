"""The fault schedule, and how each fault is injected into the running cluster.

Every fault of issue 6, one after the other at a fixed interval while the load runs,
the whole list repeated as often as the duration allows:

* ``stripe_500_burst`` / ``stripe_429_burst``: for ``STRIPE_BURST_SECONDS`` the local
  Stripe server answers every call with 500 (or 429), with ``Stripe-Should-Retry``. The
  burst is bounded in time, as an outage is, not in calls: "the next N calls" would last
  as long as the reporters, backing off ever longer, take to make N calls;
* ``stripe_slow``: every Stripe call takes ``STRIPE_SLOW_MS`` longer for
  ``STRIPE_SLOW_SECONDS`` (with one call per customer enforced all along, overlapping
  calls for a customer are refused with 429);
* ``worker_kill_9``: SIGKILL to the worker's whole process group (main process and its
  pool), then a start after ``WORKER_DOWN_SECONDS``;
* ``redis_restart``: ``SHUTDOWN`` (the AOF is written and fsynced), then a start on the
  same port and directory; ``redis_kill_9``: SIGKILL, then the same start;
* ``postgres_restart``: ``pg_ctl restart -m fast`` (every connection is cut);
* ``web_sigterm``: SIGTERM to the gunicorn master under load (graceful: workers finish
  the requests in flight), and once it has exited a new master on the same port.

The injections run on the soak's main thread (see ``soak.cluster`` on why).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable

from soak.cluster import Cluster

STRIPE_BURST_SECONDS = 5
# "Every call until the burst ends": far more calls than the reporters make in a burst.
_EVERY_CALL = 1_000_000
STRIPE_SLOW_MS = 1500
STRIPE_SLOW_SECONDS = 6
WORKER_DOWN_SECONDS = 2
REDIS_DOWN_SECONDS = 1.5
# graceful_timeout of shared/gunicorn_config.py, plus room: the master exits once its
# workers have.
WEB_EXIT_SECONDS = 20 + 15
FAULT_NAMES = (
    "stripe_500_burst", "worker_kill_9", "redis_restart", "stripe_429_burst",
    "postgres_restart", "stripe_slow", "web_sigterm", "redis_kill_9",
)
# Warm-up before the first fault, and the least time between two in a long run.
WARM_UP_SECONDS = 5
LONG_RUN_INTERVAL_SECONDS = 15


@dataclasses.dataclass
class InjectedFault:
    name: str
    at_seconds: float  # since the load started
    took_seconds: float
    detail: str
    error: str | None = None


def plan(duration: float, names: tuple[str, ...] = FAULT_NAMES, interval: float | None = None) -> list[tuple[float, str]]:
    """(seconds after the load started, fault) pairs: every fault at least once, spread evenly."""
    if not names:
        return []
    span = max(1.0, duration - WARM_UP_SECONDS)
    if interval is None:
        cycles = max(1, int(span // (len(names) * LONG_RUN_INTERVAL_SECONDS)))
        interval = span / (len(names) * cycles)
    count = max(len(names), int(span // interval))
    return [(WARM_UP_SECONDS + index * interval, names[index % len(names)]) for index in range(count)]


class Injector:
    """The faults, each a method named as in ``FAULT_NAMES``, returning what it did."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def _stripe_burst(self, status: int) -> str:
        self.cluster.stripe.set_faults(fail_next=_EVERY_CALL, status=status)
        try:
            time.sleep(STRIPE_BURST_SECONDS)
            refused = _EVERY_CALL - self.cluster.stripe.faults()["fail_next"]
        finally:
            self.cluster.stripe.set_faults(fail_next=0)
        return f"every Stripe call answered {status} for {STRIPE_BURST_SECONDS} s ({refused} calls)"

    def stripe_500_burst(self) -> str:
        return self._stripe_burst(500)

    def stripe_429_burst(self) -> str:
        return self._stripe_burst(429)

    def stripe_slow(self) -> str:
        self.cluster.stripe.set_faults(latency_ms=STRIPE_SLOW_MS)
        try:
            time.sleep(STRIPE_SLOW_SECONDS)
        finally:
            self.cluster.stripe.set_faults(latency_ms=0)
        return f"every Stripe call {STRIPE_SLOW_MS} ms slower for {STRIPE_SLOW_SECONDS} s"

    def worker_kill_9(self) -> str:
        pid = self.cluster.worker.pid
        self.cluster.worker.kill_group()
        time.sleep(WORKER_DOWN_SECONDS)
        self.cluster.start_worker()
        return f"SIGKILL to the worker's process group {pid}; started again after {WORKER_DOWN_SECONDS} s"

    def redis_restart(self) -> str:
        # Down for longer than the web's reconnect window (about half a second), so
        # publishes answer 503; the kill -9 below comes back within it (slower answers).
        started = time.monotonic()
        self.cluster.redis.restart(down_seconds=REDIS_DOWN_SECONDS)
        return f"SHUTDOWN, start on port {self.cluster.redis.port}: down {time.monotonic() - started:.2f} s"

    def redis_kill_9(self) -> str:
        started = time.monotonic()
        self.cluster.redis.kill_9_and_start()
        return f"SIGKILL, start on port {self.cluster.redis.port}: down {time.monotonic() - started:.2f} s"

    def postgres_restart(self) -> str:
        started = time.monotonic()
        self.cluster.postgres.restart()
        return f"pg_ctl restart -m fast: {time.monotonic() - started:.2f} s"

    def web_sigterm(self) -> str:
        web = self.cluster.web
        master_pid = web.pid
        started = time.monotonic()
        web.send(signal.SIGTERM)
        code = web.wait_exit(WEB_EXIT_SECONDS)
        exited = time.monotonic()
        if code is None:
            web.kill_group()
            raise RuntimeError(f"gunicorn did not exit within {WEB_EXIT_SECONDS}s of SIGTERM")
        # The master exits after its workers (it waits for them up to graceful_timeout);
        # this only makes sure nothing of the old group still holds the port.
        web.kill_group()
        self.cluster.start_web()
        return (
            f"SIGTERM to gunicorn master {master_pid}: exited with {code} after {exited - started:.2f} s; "
            f"serving again after {time.monotonic() - started:.2f} s"
        )


def run_schedule(
    schedule: list[tuple[float, str]], injector: Injector, *, load_started: float, until: float,
    watch: Callable[[], None],
) -> list[InjectedFault]:
    """Inject the faults at their times (late ones at once), then wait for ``until``
    seconds after ``load_started``; ``watch`` is called about once a second throughout."""
    injected = []
    for at_seconds, name in schedule:
        while time.monotonic() - load_started < at_seconds:
            watch()
            time.sleep(min(1.0, max(0.0, at_seconds - (time.monotonic() - load_started))))
        started = time.monotonic()
        try:
            detail, error = getattr(injector, name)(), None
        except Exception as failure:  # noqa: BLE001 - reported, and the run fails
            detail, error = "", f"{type(failure).__name__}: {failure}"
        injected.append(InjectedFault(name, round(started - load_started, 2), round(time.monotonic() - started, 2), detail, error))
        print(f"[soak] t={started - load_started:6.1f}s {name}: {error or detail}", flush=True)
    while time.monotonic() - load_started < until:
        watch()
        time.sleep(min(1.0, max(0.0, until - (time.monotonic() - load_started))))
    return injected
