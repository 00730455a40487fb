"""Ingest benchmark (issue 3): this endpoint against a hello-world Flask POST, same gunicorn.

    .venv/bin/python -m bench.ingest [--seconds 8] [--rounds 3] [--machine-redis]

All servers run with shared/gunicorn_config.py. The maximum rate (wrk, closed loop)
of the hello-world app, of the hello-world app that also waits for one Redis PING (the
ceiling of anything that must hear back from Redis before answering), of the real
endpoint with an App Password and with a JWT (validation, catalog check, enqueue to the
real Redis), and of the batch endpoint (100 events a request) is measured in alternating rounds,
so a slow minute of this shared machine hits both sides; the medians are reported. Then
p50/p99 of the real endpoint at half its maximum rate and at 10 requests/s (paced wrk).

Redis is one of the run's own with the README's persistence (AOF, ``appendfsync
always``); ``--machine-redis`` uses this machine's instead (here: AOF off).
"""

from __future__ import annotations

import argparse
import json

from bench import harness


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--machine-redis", action="store_true", help="this machine's Redis, not a durable one")
    args = parser.parse_args()
    harness.ensure_load_tools()
    with harness.environment(durable=not args.machine_redis) as env:
        persistence = harness.redis_persistence(env)
        caller = harness.seed(env)
        body = harness.event_body(caller)
        with harness.gunicorn(env, "bench.hello_app:create_app()", 8181) as hello, harness.gunicorn(
            env, "bench.hello_app:create_app(redis_round_trip=True)", 8183
        ) as hello_redis, harness.gunicorn(env, "ingest_api:create_app()", 8182) as web:
            url = f"{web}/api/billing/external-usage"
            batch = {"events": [body] * 100}
            loads = {
                "hello_world": (f"{hello}/api/billing/external-usage", body, "Bearer unused"),
                "hello_world_redis_ping": (f"{hello_redis}/api/billing/external-usage", body, "Bearer unused"),
                "app_password": (url, body, f"Bearer {caller.app_password}"),
                "jwt": (url, body, f"Bearer {caller.jwt}"),
                "batch_of_100": (f"{url}/batch", batch, f"Bearer {caller.app_password}"),
                # A new Idempotency-Key each request: the edge's PostgreSQL lookup of the key.
                "app_password_keyed": (url, body, f"Bearer {caller.app_password}"),
            }
            for name, (target, payload, authorization) in loads.items():  # warm-up: imports, pools, caches
                harness.max_rate(target, payload, authorization, seconds=2, keyed=name.endswith("_keyed"))
            rounds: dict[str, list[harness.MaxRate]] = {name: [] for name in loads}
            # Per load, over its rounds: script calls and events appended (each call is one fsync).
            grouping = {name: [0, 0] for name in loads}
            for _ in range(args.rounds):
                for name, (target, payload, authorization) in loads.items():
                    calls_before, events_before = harness.accept_calls(env)
                    rounds[name].append(
                        harness.max_rate(target, payload, authorization, seconds=args.seconds, keyed=name.endswith("_keyed"))
                    )
                    calls, events = harness.accept_calls(env)
                    grouping[name][0] += calls - calls_before
                    grouping[name][1] += events - events_before
            maxima = {name: _median(results) for name, results in rounds.items()}
            half = min(maxima["app_password"].requests_per_second, maxima["jwt"].requests_per_second) / 2
            paced = {
                f"{name}_at_half": harness.fixed_rate(url, body, authorization, half, seconds=args.seconds)
                for name, (_, _, authorization) in list(loads.items())[2:4]
            }
            # A light load: what waiting for company in a group costs a lone request.
            # At least 20 s: 200 requests, for a p99 that is not just the slowest one.
            paced["app_password_at_10"] = harness.fixed_rate(
                url, body, f"Bearer {caller.app_password}", 10, seconds=max(args.seconds, 20), connections=1
            )
    print(json.dumps({name: [vars(r) for r in results] for name, results in rounds.items()}, indent=1))
    hello_rate = maxima["hello_world"].requests_per_second
    print()
    print(persistence)
    print("| load | requests/s | events/s | p50 ms | p99 ms | non-2xx | ratio to hello-world |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result in maxima.items():
        events = 100 if name == "batch_of_100" else 1
        if name == "batch_of_100":
            per_round = ", ".join(f"{r.requests_per_second * 100:,.0f}" for r in rounds[name])
            print(f"| {name} (max, wrk, median of {args.rounds}) | {result.requests_per_second:,.0f} | {result.requests_per_second * events:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.non2xx} | (events/s of the rounds: {per_round}) |")
            continue
        ratio = "" if name == "hello_world" else f"{result.requests_per_second / hello_rate:.0%}"
        per_round = ", ".join(f"{r.requests_per_second / hello.requests_per_second:.0%}" for r, hello in zip(rounds[name], rounds["hello_world"], strict=True))
        ratio += "" if name == "hello_world" else f" (rounds: {per_round})"
        print(f"| {name} (max, wrk, median of {args.rounds}) | {result.requests_per_second:,.0f} | {result.requests_per_second:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.non2xx} | {ratio} |")
    for name, result in paced.items():
        print(f"| {name} (paced {result.rate:,.0f}/s, wrk) | {result.achieved:,.0f} | {result.achieved:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.non2xx} | |")
    print()
    print("Events per accept-script call (one fsync each), over the rounds: " + ", ".join(
        f"{name} {events / calls:.1f}" for name, (calls, events) in grouping.items() if not name.startswith("hello")
    ))


def _median(results: list[harness.MaxRate]) -> harness.MaxRate:
    """The round with the median rate (use an odd number of rounds)."""
    return sorted(results, key=lambda r: r.requests_per_second)[len(results) // 2]


if __name__ == "__main__":
    main()
