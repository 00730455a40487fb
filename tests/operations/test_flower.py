"""Flower, as the Procfile's ``flower`` runs it (``python -m worker.flower``), against this
run's broker: behind basic auth from ``FLOWER_BASIC_AUTH``, and listing the running worker.
Without a usable ``FLOWER_BASIC_AUTH`` it must not start at all."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from tests.operations.conftest import SETTLE_SECONDS
from tests.processes import http_get, wait_until

pytestmark = pytest.mark.slow

CREDENTIALS = "operator:flower-test-password"


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_flower_requires_basic_auth_and_lists_the_running_worker(settings, start_worker, flower_process):
    worker = start_worker(settings)
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()

    status, body = http_get(f"{flower.url}/api/workers")
    assert status == 401, body
    for wrong in ("operator:wrong-password", "someone:flower-test-password", "operator:", CREDENTIALS + "x"):
        assert http_get(f"{flower.url}/api/workers", headers=basic(wrong))[0] == 401, wrong
    # Not Basic, or not base64: refused as well.
    assert http_get(f"{flower.url}/api/workers", headers={"Authorization": "Bearer " + CREDENTIALS})[0] == 401
    assert http_get(f"{flower.url}/api/workers", headers={"Authorization": "Basic !!!"})[0] == 401
    # The dashboard too, not only the API.
    assert http_get(f"{flower.url}/")[0] == 401
    assert http_get(f"{flower.url}/", headers=basic(CREDENTIALS))[0] == 200

    def workers_listed():
        status, body = http_get(f"{flower.url}/api/workers?refresh=1", headers=basic(CREDENTIALS), timeout=30)
        assert status == 200, body
        listed = json.loads(body)
        return [name for name in listed if name.startswith(f"{worker.name}@")]

    names = wait_until(
        workers_listed, SETTLE_SECONDS, interval=1,
        message=lambda: f"{worker.log_tail(20)}\n{flower.log_tail(20)}",
    )
    assert len(names) == 1
    assert flower.alive() and worker.alive()


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "value",
    [None, "", "operator", "operator:", ":secret", ":", "operator:pw,other"],
    ids=["unset", "empty", "no-colon", "no-password", "no-user", "colon-only", "one-entry-without-password"],
)
def test_flower_refuses_to_start_without_usable_basic_auth(settings, flower_process, value):
    flower = flower_process(settings, FLOWER_BASIC_AUTH=value)
    flower.launch()

    listened = False
    deadline = time.monotonic() + SETTLE_SECONDS
    while flower.alive():
        listened = listened or _listens(flower.port)
        assert time.monotonic() < deadline, f"Flower is still running without usable basic auth\n{flower.log_tail()}"
        time.sleep(0.05)

    output = flower.log_path.read_text()
    assert flower.process.returncode != 0, output
    assert "FLOWER_BASIC_AUTH" in output and "user:password" in output, output
    assert "Traceback" not in output, output
    assert not listened and not _listens(flower.port)
