"""Wrong credentials in bulk (finding 11 of issue 19): what they cost PostgreSQL.

    .venv/bin/python -m bench.failed_auth      # --requests 10000

The web process as the Procfile runs it. ``--requests`` POSTs, each with a new random
well-formed App Password that does not exist, on keep-alive connections: first all from
one address (127.0.0.1), then each from an address of its own (127.1.0.0/16: Linux
answers the whole loopback /8). Meanwhile a valid caller posts an event every 50 ms. The
database's cost is its transaction count (``pg_stat_database`` xact_commit +
xact_rollback of the benchmark's database, read after the backends flushed their
statistics): one authentication lookup is two (the pool's pre-ping, then the query).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from bench import harness
from ingest_api.credentials import new_app_password
from shared import embedded

URL = "/api/billing/external-usage"
# A backend reports its statistics at the latest this long after it goes idle.
STATS_FLUSH_SECONDS = 12


def transactions(database_url: str) -> int:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        count = connection.scalar(
            sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        )
    engine.dispose()
    return count


def _post(connection: http.client.HTTPConnection, body: bytes, token: str) -> int:
    connection.request("POST", URL, body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    return response.status


def burst(port: int, body: bytes, requests: int, *, many_sources: bool, connections: int = 8) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def run(worker: int) -> None:
        connection = None
        for n in range(worker, requests, connections):
            if connection is None or many_sources:
                if connection is not None:
                    connection.close()
                source = f"127.1.{n // 250}.{n % 250 + 1}" if many_sources else "127.0.0.1"
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
            status = _post(connection, body, new_app_password().token)
            with lock:
                statuses[status] += 1
        connection.close()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(run, range(connections)))
    return statuses


def valid_caller(port: int, body: bytes, token: str, stop: threading.Event) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    while not stop.is_set():
        statuses[_post(connection, body, token)] += 1
        time.sleep(0.05)
    connection.close()
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    with harness.environment() as env:
        caller = harness.seed(env)
        body = json.dumps(harness.event_body(caller)).encode()
        port = embedded.free_port()
        with harness.gunicorn(env, "ingest_api:create_app()", port):
            for many_sources in (False, True):
                # The valid caller is at work before the burst (each web process verified it).
                warm = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
                for _ in range(30):
                    _post(warm, body, caller.app_password)
                warm.close()
                time.sleep(STATS_FLUSH_SECONDS)
                before = transactions(env.database_url)
                stop = threading.Event()
                with ThreadPoolExecutor(1) as pool:
                    meanwhile = pool.submit(valid_caller, port, body, caller.app_password, stop)
                    started = time.monotonic()
                    statuses = burst(port, body, args.requests, many_sources=many_sources)
                    elapsed = time.monotonic() - started
                    stop.set()
                    valid = meanwhile.result()
                time.sleep(STATS_FLUSH_SECONDS)
                # The valid caller's own requests: each verified caller is looked up again
                # every AUTH_CACHE_SECONDS per process, and the catalog is reloaded.
                spent = transactions(env.database_url) - before - 1
                print(json.dumps({
                    "sources": "one per request" if many_sources else "one",
                    "wrong_app_passwords": args.requests,
                    "seconds": round(elapsed, 1),
                    "answers": dict(sorted(statuses.items())),
                    "database_transactions": spent,
                    "valid_caller_answers": dict(sorted(valid.items())),
                }))
                # Let the buckets fill again before the next round.
                time.sleep(10)


if __name__ == "__main__":
    main()
