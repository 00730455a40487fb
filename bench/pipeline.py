"""End-to-end benchmark (issue 4): from accepted to reported at the local Stripe server.

    .venv/bin/python -m bench.pipeline [--seconds 20] [--rates 1000,2000,3000,4000] [--machine-redis]

Everything runs on this machine's 2 cores at once, as the Procfile runs it: gunicorn web,
a Celery worker (concurrency 2), beat, Redis, PostgreSQL, the local Stripe server, and
the load (wrk). Measured in the same run:

1. the per-task ceiling: a Celery worker with the same settings doing nothing per task
   (``billing.ping``), draining a queue filled beforehand;
2. sustained end-to-end throughput: batches of 100 events offered at fixed rates; a rate
   is sustained when, 5 s after the load stops, every accepted event is reported;
3. the time from acceptance (row ``received_at``) to report (``stripe_reported_at``) at
   500 events/s through the single-event endpoint: p50, p99, max.

Redis is one of the run's own with the README's persistence (AOF, ``appendfsync
always``): the intake and every Celery message pay its fsync, as in production.
``--machine-redis`` uses this machine's instead (here: AOF off).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import redis
import sqlalchemy as sa

from bench import harness
from devtools import children
from shared import models

_logs = models.UserBillableRequestLog


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log_name: str):
    """A child in its own group logging to var/bench-LOG_NAME.log; SIGTERM, then SIGKILL to its group after 30 s."""
    child = harness.child(log_name, args, env).start()
    try:
        yield child
    finally:
        child.stop(grace=30)


def worker(env: dict[str, str]):
    return process(
        [sys.executable, "-m", "celery", "--app", "worker", "worker", "--concurrency", "2", "--loglevel", "WARNING"],
        env, "worker",
    )


def count(engine: sa.Engine, *conditions) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(_logs).where(*conditions))


def holds_within(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Whether ``predicate`` held within ``timeout`` (the tests' ``wait_until``, as a yes or no)."""
    try:
        children.wait_until(predicate, timeout, interval=interval)
    except children.WaitTimeout:
        return False
    return True


def task_ceiling(env: harness.Environment, tasks: int) -> float:
    """No-op tasks per second through one worker with the project's Celery settings."""
    # The Celery app of this process reads its settings from the environment, as the
    # worker does: the bench's own.
    os.environ.update(env.env)
    from shared.queue import celery_app

    with celery_app.producer_or_acquire() as producer:
        for _ in range(tasks):
            celery_app.send_task("billing.ping", producer=producer)
    broker = redis.Redis.from_url(env.broker_url)
    queue = celery_app.conf.task_default_queue
    assert broker.llen(queue) == tasks
    with worker(env.env):
        assert holds_within(lambda: broker.llen(queue) < tasks, 60, 0.005)
        started = time.monotonic()
        assert holds_within(lambda: broker.llen(queue) == 0, 120, 0.005)
        elapsed = time.monotonic() - started
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rates", default="1000,2000,3000,4000", help="offered events/s to try")
    parser.add_argument("--machine-redis", action="store_true", help="this machine's Redis, not a durable one")
    args = parser.parse_args()
    harness.ensure_load_tools()
    results: dict[str, object] = {}
    with harness.environment(redis_db=14, durable=not args.machine_redis) as env:
        results["redis"] = harness.redis_persistence(env)
        caller = harness.seed(env, organizations=8)
        engine = sa.create_engine(env.database_url, poolclass=sa.pool.NullPool)
        results["ceiling_tasks_per_second"] = task_ceiling(env, 5000)
        with (
            harness.gunicorn(env, "ingest_api:create_app()", 8184) as web,
            worker(env.env),
            process(
                [sys.executable, "-m", "celery", "--app", "worker", "beat", "--loglevel", "WARNING",
                 "--schedule", str(harness.LOGS / "bench-beat-schedule")],
                env.env, "beat",
            ),
        ):
            url = f"{web}/api/billing/external-usage"
            authorization = f"Bearer {caller.app_password}"
            sustained = []
            for rate in (int(r) for r in args.rates.split(",")):
                batch = {"events": [harness.event_body(caller, i) for i in range(100)]}
                before, reported_before = count(engine), count(engine, _logs.status == "reported")
                paced = harness.fixed_rate(f"{url}/batch", batch, authorization, rate / 100, seconds=args.seconds, connections=4)
                load_end = time.monotonic()
                # Where the backlog is when the load stops: not yet recorded (in the
                # intake) or recorded and not yet reported. The stage that holds it is
                # the one that did not keep up.
                in_intake = _queued(env)
                recorded = count(engine) - before
                unreported = recorded - (count(engine, _logs.status == "reported") - reported_before)
                accepted = recorded + in_intake
                drained = holds_within(lambda target=reported_before + accepted: count(engine, _logs.status == "reported") >= target, 120)
                lag = time.monotonic() - load_end
                sustained.append({
                    "offered": rate, "accepted_per_second": paced.achieved * 100, "drain_after_load_s": round(lag, 2),
                    "drained": drained, "at_load_end_in_intake": in_intake, "at_load_end_unreported": unreported,
                })
                print(sustained[-1], flush=True)
            results["sustained"] = sustained

            started_at = _now(engine)
            harness.fixed_rate(url, harness.event_body(caller), authorization, 500, seconds=args.seconds, connections=8)
            holds_within(lambda: count(engine, _logs.status != "reported") == 0, 120)
            with engine.connect() as connection:
                latencies = sorted(
                    connection.scalars(
                        sa.select(sa.extract("epoch", _logs.stripe_reported_at - _logs.received_at)).where(
                            _logs.received_at >= started_at
                        )
                    )
                )
            results["latency_500_per_second"] = {
                "events": len(latencies),
                "p50_s": float(latencies[len(latencies) // 2]),
                "p99_s": float(latencies[int(len(latencies) * 0.99) - 1]),
                "max_s": float(latencies[-1]),
            }
        engine.dispose()
    print(results)
    _print_table(results)


def _queued(env: harness.Environment) -> int:
    from shared import intake

    return redis.Redis.from_url(env.broker_url).xlen(intake.STREAM)


def _now(engine: sa.Engine):
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.now()))


def _print_table(results: dict) -> None:
    ceiling = results["ceiling_tasks_per_second"]
    print()
    print(results["redis"])
    print(f"Per-task ceiling (no-op Celery tasks, same worker settings): {ceiling:,.0f} tasks/s")
    print()
    print("| offered events/s | accepted events/s | all reported within (s after load) | at load end: in the intake / recorded, unreported | ratio to per-task ceiling |")
    print("|---:|---:|---:|---:|---:|")
    for row in results["sustained"]:
        print(f"| {row['offered']:,} | {row['accepted_per_second']:,.0f} | {row['drain_after_load_s']} {'' if row['drained'] else '(not drained)'} | {row['at_load_end_in_intake']:,} / {row['at_load_end_unreported']:,} | {row['accepted_per_second'] / ceiling:.1f}x |")
    latency = results["latency_500_per_second"]
    print()
    print(f"Acceptance → report at 500 events/s ({latency['events']} events): p50 {latency['p50_s']:.3f} s, p99 {latency['p99_s']:.3f} s, max {latency['max_s']:.3f} s")


if __name__ == "__main__":
    main()
