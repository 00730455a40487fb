"""Ingest benchmark (issue 3): this endpoint against a hello-world Flask POST, same gunicorn.

    .venv/bin/python -m bench.ingest

Measures, in one run and with the same gunicorn.conf.py: the maximum rate (wrk, closed
loop) of the hello-world app and of the real endpoint with an App Password and with a
JWT (validation, catalog check, enqueue to the real Redis); p50/p99 of the real endpoint
at half its maximum rate (hey, fixed rate); and events/s through the batch endpoint.
"""

from __future__ import annotations

import argparse
import json

import redis

from bench import harness
from shared import intake


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    harness.ensure_load_tools()
    results = {}
    with harness.environment() as env:
        caller = harness.seed(env)
        body = harness.event_body(caller)
        with harness.gunicorn(env, "bench.hello_app:create_app()", 8181) as hello:
            harness.max_rate(f"{hello}/api/billing/external-usage", body, "Bearer x", seconds=2)  # warm-up
            results["hello_world"] = harness.max_rate(f"{hello}/api/billing/external-usage", body, "Bearer x", seconds=args.seconds)
        with harness.gunicorn(env, "ingest_api:create_app()", 8182) as web:
            url = f"{web}/api/billing/external-usage"
            harness.max_rate(url, body, f"Bearer {caller.app_password}", seconds=2)  # warm-up
            results["app_password"] = harness.max_rate(url, body, f"Bearer {caller.app_password}", seconds=args.seconds)
            results["jwt"] = harness.max_rate(url, body, f"Bearer {caller.jwt}", seconds=args.seconds)
            half = min(results["app_password"].requests_per_second, results["jwt"].requests_per_second) / 2
            results["app_password_at_half"] = harness.fixed_rate(url, body, f"Bearer {caller.app_password}", half, seconds=args.seconds)
            results["jwt_at_half"] = harness.fixed_rate(url, body, f"Bearer {caller.jwt}", half, seconds=args.seconds)
            batch = {"events": [body] * 100}
            results["batch_100"] = harness.max_rate(f"{url}/batch", batch, f"Bearer {caller.app_password}", seconds=args.seconds)
            queued = redis.Redis.from_url(env.broker_url).xlen(intake.STREAM)
    hello_rate = results["hello_world"].requests_per_second
    print(json.dumps({k: vars(v) for k, v in results.items()} | {"stream_entries": queued}, indent=2))
    print()
    print("| load | requests/s | events/s | p50 ms | p99 ms | non-2xx | ratio to hello-world |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        if isinstance(result, harness.MaxRate):
            events = result.requests_per_second * (100 if name == "batch_100" else 1)
            ratio = "" if name in ("hello_world", "batch_100") else f"{result.requests_per_second / hello_rate:.0%}"
            print(f"| {name} (max, wrk) | {result.requests_per_second:,.0f} | {events:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.non2xx} | {ratio} |")
        else:
            print(f"| {name} (paced {result.rate:,.0f}/s, wrk) | {result.achieved:,.0f} | {result.achieved:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.non2xx} | |")


if __name__ == "__main__":
    main()
