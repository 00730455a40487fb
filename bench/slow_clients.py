"""Slow clients (issue 10): a normal caller's latency while other connections dribble.

    .venv/bin/python -m bench.slow_clients      # --seconds 60 --dribblers 100

The web process as the Procfile runs it (``shared/gunicorn_config.py``). A normal caller
posts a valid event and asks ``/healthz`` every 50 ms. Measured in the same run: the
caller alone (the reference), then while ``--dribblers`` connections each send a
request's first line and one header line every 5 s (longer than gunicorn's 30 s worker
timeout in all), then while half as many authenticated connections stall mid-body (one
byte every 2 s of a 100 kB body).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import requests

from bench import harness

URL = "/api/billing/external-usage"


class Dribblers:
    """``count`` connections that send a request's first line, then one header line every
    ``every`` seconds (or, with ``body=True``, valid headers and then a body byte at a
    time): the slow or stalled clients of issue 10."""

    def __init__(self, port: int, count: int, every: float, *, body: bool = False, authorization: str = ""):
        self.port, self.count, self.every, self.body, self.authorization = port, count, every, body, authorization
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Dribblers:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if self.body:
                sock.sendall(
                    f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: {self.authorization}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
                )
            else:
                sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\n".encode())
            self.sockets.append(sock)
        self.thread.start()
        return self

    def _run(self) -> None:
        step = 0
        while not self.stop.wait(self.every):
            step += 1
            for sock in list(self.sockets):
                with contextlib.suppress(OSError):
                    sock.sendall(b" " if self.body else f"X-Dribble-{step}: y\r\n".encode())

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


@dataclass
class Calls:
    latencies: list[float] = field(default_factory=list)  # of the posts answered 202
    failures: list[str] = field(default_factory=list)  # anything else: a timeout, an error, a /healthz not 200


def normal_caller(base_url: str, body: dict, headers: dict[str, str], seconds: float) -> Calls:
    """Post ``body`` and ask ``/healthz`` every 50 ms for ``seconds`` (10 s at most for an
    answer)."""
    calls = Calls()
    with requests.Session() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = session.post(f"{base_url}{URL}", json=body, headers=headers, timeout=10)
                if response.status_code == 202:
                    calls.latencies.append(time.perf_counter() - started)
                else:
                    calls.failures.append(f"{response.status_code}: {response.text[:200]}")
                health = session.get(f"{base_url}/healthz", timeout=10)
                if health.status_code != 200:
                    calls.failures.append(f"/healthz {health.status_code}")
            except requests.RequestException as error:
                calls.failures.append(repr(error))
            time.sleep(0.05)
    return calls


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--dribblers", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with harness.environment() as env:
        caller = harness.seed(env)
        body, headers = harness.event_body(caller), {"Authorization": f"Bearer {caller.app_password}"}
        port = 8185
        with harness.gunicorn(env, "ingest_api:create_app()", port) as web:
            normal_caller(web, body, headers, 2)  # warm-up
            loads = {
                "alone (reference)": contextlib.nullcontext(),
                f"{args.dribblers} connections dribbling headers (a line every 5 s)": Dribblers(port, args.dribblers, 5),
                f"{args.dribblers // 2} authenticated connections stalled mid-body (a byte every 2 s)": Dribblers(
                    port, args.dribblers // 2, 2, body=True, authorization=headers["Authorization"]
                ),
            }
            for name, load in loads.items():
                with load:
                    rows.append((name, normal_caller(web, body, headers, args.seconds)))
    print()
    print("| while | posts answered 202 | failed (timeout, error) | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, calls in rows:
        latencies = calls.latencies or [float("nan")]
        print(
            f"| {name} | {len(calls.latencies)} | {len(calls.failures)} | {statistics.median(latencies) * 1000:.1f} "
            f"| {p99(latencies) * 1000 if len(latencies) > 1 else float('nan'):.1f} | {max(latencies) * 1000:.1f} |"
        )
        for failure in calls.failures[:3]:
            print(f"  e.g. {failure}")


if __name__ == "__main__":
    main()
