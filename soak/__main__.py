"""``python -m soak --duration 300``: the soak run of issue 6. Exits 1 if anything was lost,
duplicated or unequal (or the run itself could not do what it should), else 0.

Redis runs with ``appendfsync always`` by default. With ``everysec`` Redis answers a
write before it is even written to the AOF while the previous second's background fsync
is still running (``flushAppendOnlyFile`` postpones the write; the reply goes out
anyway). A SIGKILL of Redis in that moment loses writes it acknowledged: an accepted
event (stream entry and Idempotency-Key claim together), i.e. a 202 never billed, and a
retry of its key billed as a new event. Measured on this machine (Redis 6.2, 8 clients
running the accept script's XADD+SET, SIGKILL while ``aof_pending_bio_fsync`` was 1): 7 of
10 kills lost 4 to 11 acknowledged writes with ``everysec``, 0 of 10 with ``always``. A
``SHUTDOWN`` loses nothing with either (the AOF is written and fsynced before exit).
The window is narrow (a fraction of a millisecond per second on this disk), so a soak
alone rarely hits it: 57 SIGKILLs under load with ``--appendfsync everysec`` lost
nothing; ``tests/shared/test_embedded_redis.py`` aims the kill at it instead. ``always`` costs
one fsync per event-loop round, shared by every write of that round: 0.30 ms instead of
0.13 ms per script call for one client, and no loss of throughput with five (11.6k
calls/s against 9.4k), far above what the web processes can send.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shlex
import signal
import sys
import time
from pathlib import Path

from soak import faults, report, seeding
from soak.cluster import SOAK_ROOT, STRIPE_VALUE_DECIMALS, Cluster, run_directory
from soak.load import REQUEST_TIMEOUT_SECONDS, RETRY_BUDGET_SECONDS, LoadGenerator
from soak.voids import STOP_TIMEOUT_SECONDS, Voider

# Stripe's summaries window read at the end: every event's time (up to an hour before it
# was sent) and every void's (a negative event has its row's time) falls inside it.
SUMMARY_WINDOW_BEFORE_SECONDS = 3 * 3600
SUMMARY_WINDOW_AFTER_SECONDS = 3600


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    parser.add_argument("--rate", type=float, default=200, help="new events per second offered (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="sender threads (default 16)")
    parser.add_argument("--organizations", type=int, default=5, help="organizations billed (default 5)")
    parser.add_argument("--seed", type=int, default=6, help="seed of the load's random plan (default 6)")
    parser.add_argument(
        "--faults", default=",".join(faults.FAULT_NAMES),
        help=f"comma-separated faults to inject in turn, or 'none' (default: all: {', '.join(faults.FAULT_NAMES)})",
    )
    parser.add_argument("--fault-interval", type=float, default=None, help="seconds between faults (default: spread evenly)")
    parser.add_argument("--drain-timeout", type=float, default=300, help="most seconds to wait for the pipeline to drain")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always", help="Redis AOF fsync policy")
    parser.add_argument("--meter-api", choices=("v2", "v1"), default="v2", help="STRIPE_METER_API of the worker")
    parser.add_argument(
        "--report-json", type=Path, default=SOAK_ROOT / "last-report.json",
        help="where to write the JSON report (default var/soak/last-report.json; the run directory gets a copy)",
    )
    args = parser.parse_args(argv)
    names = () if args.faults.strip() in ("", "none") else tuple(name.strip() for name in args.faults.split(","))
    unknown = [name for name in names if name not in faults.FAULT_NAMES]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(faults.FAULT_NAMES)}")
    args.fault_names = names
    return args


def _stop_on_sigterm(signal_number, frame):
    # Ctrl-C and SIGTERM alike: unwind, so that everything started is stopped.
    raise KeyboardInterrupt


class ProcessWatch:
    """Notices a process that died without a fault causing it, records it and starts it
    again, as a process supervisor would. A warning in the report, not a failure: what
    matters is whether anything was lost, and the reconciliation shows that."""

    def __init__(self, cluster: Cluster, load_started: float):
        self.cluster = cluster
        self.load_started = load_started
        self.exits: list[str] = []

    def __call__(self) -> None:
        restarts = {
            "redis": self.cluster.redis.start, "stripe": self.cluster.stripe.start, "web": self.cluster.start_web,
            "worker": self.cluster.start_worker, "beat": self.cluster.start_beat,
        }
        for name in self.cluster.check_alive():
            seconds = time.monotonic() - self.load_started
            self.exits.append(f"{name} exited unexpectedly at t={seconds:.1f}s; started again")
            print(f"[soak] {self.exits[-1]}", flush=True)
            restarts[name]()


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    command = "python -m soak " + shlex.join(sys.argv[1:] if argv is None else argv)
    with run_directory() as directory:
        print(f"[soak] run directory {directory}", flush=True)
        cluster = Cluster(directory, appendfsync=args.appendfsync, meter_api=args.meter_api)
        try:
            cluster.start_servers()
            print(
                f"[soak] Redis :{cluster.redis.port} (appendfsync {args.appendfsync}), PostgreSQL, "
                f"Stripe :{cluster.stripe.port} up; seeding", flush=True,
            )
            token_ttl = int(args.duration + args.drain_timeout + RETRY_BUDGET_SECONDS + 3600)
            world = seeding.seed(cluster.env, args.organizations, token_ttl_seconds=token_ttl)
            cluster.start_processes()
            print(f"[soak] web :{cluster.web_port}, worker, beat up; load for {args.duration:.0f} s", flush=True)

            schedule = faults.plan(args.duration, args.fault_names, args.fault_interval)
            generator = LoadGenerator(
                cluster.web_port, world, rate=args.rate, concurrency=args.concurrency, seed=args.seed,
                stripe_value_decimals=STRIPE_VALUE_DECIMALS,
            )
            voider = Voider(cluster.web_port, world, seed=args.seed + 1)
            generator.ledger.on_first_acceptance = voider.consider
            started_at = dt.datetime.now(dt.UTC)
            voider.start()
            generator.start()
            watch = ProcessWatch(cluster, generator.started_at)
            try:
                injected = faults.run_schedule(
                    schedule, faults.Injector(cluster), load_started=generator.started_at, until=args.duration, watch=watch
                )
            except BaseException:
                generator.abandon()  # interrupted or failed: no waiting for requests in flight
                voider.abandon()
                raise
            generator.stop(timeout=RETRY_BUDGET_SECONDS + REQUEST_TIMEOUT_SECONDS + 30)
            load_seconds = generator.stopped_at - generator.started_at
            print(
                f"[soak] load stopped after {load_seconds:.0f} s; {len(voider.ledger.planned)} voids asked; "
                "waiting for the last voids' answers and for the pipeline to drain", flush=True,
            )
            # The voids planned for later are asked after the load, while the pipeline drains
            # (and the watch goes on: a worker that dies now must be started again).
            voiders_left = voider.stop(STOP_TIMEOUT_SECONDS, watch)

            broker = cluster.redis.client()
            drain = report.wait_for_drain(cluster.postgres.database_url, broker, args.drain_timeout, watch)
            broker.close()
            void_drain = report.wait_for_voids(cluster.postgres.database_url, args.drain_timeout, watch)
            print(f"[soak] drained in {drain['seconds']} s; voids settled in {void_drain['seconds']} s: "
                  f"{void_drain['voids_by_state']}", flush=True)
            # What Stripe counts lags its receipts and cancels: read once all of it shows.
            time.sleep(cluster.stripe.faults()["summary_lag_seconds"] + 1)
            stripe_events = cluster.stripe.meter_events()
            window_start = int(started_at.timestamp() - SUMMARY_WINDOW_BEFORE_SECONDS) // 60 * 60
            window_end = -(-int(time.time() + SUMMARY_WINDOW_AFTER_SECONDS) // 60) * 60
            summaries = cluster.stripe.summary_totals(
                [organization.stripe_customer_id for organization in world.organizations], window_start, window_end
            )
            result = report.reconcile(
                cluster.postgres.database_url, stripe_events, generator.ledger, world, STRIPE_VALUE_DECIMALS,
                void_ledger=voider.ledger, stripe_summaries=summaries,
            )
            # The local Stripe server's answer when the one-call-per-customer rule is broken;
            # the sharded reporters should never provoke it.
            result["stripe_one_call_per_customer_refusals"] = report.lines_containing(
                cluster.logs / "worker.log", "Too many concurrent requests for customer"
            )
        except KeyboardInterrupt:
            print("[soak] interrupted; stopping everything", file=sys.stderr, flush=True)
            return 130
        finally:
            cluster.stop()

    problems = list(result.pop("problems"))
    problems += [f"fault {f.name} could not be injected: {f.error}" for f in injected if f.error]
    if not drain["drained"]:
        problems.append(f"the pipeline did not drain within {args.drain_timeout:.0f} s: {drain['state']}")
    if voiders_left:
        problems.append(f"voids still being asked {STOP_TIMEOUT_SECONDS:.0f} s after the load stopped: {voiders_left}")
    if not void_drain["drained"]:
        problems.append(f"the voids did not settle within {args.drain_timeout:.0f} s: {void_drain['voids_by_state']}")
    paths = [args.report_json, directory / "report.json"]
    full_report = {
        "command": command,
        "run_directory": str(directory),
        "started_at": started_at.isoformat(),
        "settings": {
            "appendfsync": args.appendfsync, "meter_api": args.meter_api, "organizations": args.organizations,
            "seed": args.seed, "stripe_value_decimals": STRIPE_VALUE_DECIMALS,
        },
        "load": {"seconds": round(load_seconds, 1), "rate": args.rate, "concurrency": args.concurrency},
        "faults": [dataclasses.asdict(fault) for fault in injected],
        "unexpected_exits": watch.exits,  # warnings
        "drain": drain,
        "void_drain": void_drain,
        **result,
        "problems": problems,
        "passed": not problems,
        "report_paths": [str(path) for path in paths],
    }
    report.write(full_report, paths)
    print(report.render(full_report), flush=True)
    return 0 if full_report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
