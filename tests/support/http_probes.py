"""Requests as the operations tests send them: one HTTP request to a real server on a new
connection (``http``), and a GET through the Flask test client that must answer in bounded
time (``get_within``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request


def http(method: str, url: str, *, json_body=None, headers: dict[str, str] | None = None, timeout: float = 30):
    """(status, headers, parsed JSON body or raw text) of one request on a new connection."""
    data = None
    headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, error.headers, error.read()
    try:
        return status, response_headers, json.loads(raw)
    except ValueError:
        return status, response_headers, raw.decode(errors="replace")


def get_within(client, path: str, seconds: float):
    """``GET path`` through the Flask test client, asked from a thread so that a hanging
    answer fails the test within ``3 × seconds`` (a C call blocked on a socket would not
    even let pytest-timeout interrupt it), and fails it too if it took ``seconds`` or more.
    The response and how long it took."""
    answer = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answer.append(client.get(path)), daemon=True)
    thread.start()
    thread.join(seconds * 3)
    elapsed = time.monotonic() - started
    assert answer, f"{path} did not answer within {elapsed:.0f}s"
    assert elapsed < seconds, f"{path} took {elapsed:.1f}s"
    return answer[0], elapsed



