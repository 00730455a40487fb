"""Flower, as the Procfile's ``flower`` runs it (``python -m worker.flower``), against this
run's broker: behind basic auth from ``FLOWER_BASIC_AUTH``, and listing the running worker.
Without a usable ``FLOWER_BASIC_AUTH`` it must not start at all."""

from __future__ import annotations

import base64
import json
import time

import pytest

from devtools.children import http_get, wait_until
from shared import embedded
from tests.support.billing import URL, build_world, status_counts
from tests.support.service_processes import SETTLE_SECONDS

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


def test_flowers_metrics_and_healthcheck_want_the_basic_auth_too(settings, start_worker, flower_process):
    """Flower routes them without its authentication; its metrics name every worker."""
    worker = start_worker(settings)
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()

    for path in ("/metrics", "/healthcheck"):
        status, body = http_get(f"{flower.url}{path}")
        assert status == 401 and worker.name.encode() not in body, (path, body)
        assert http_get(f"{flower.url}{path}", headers=basic("operator:wrong-password"))[0] == 401, path
    assert http_get(f"{flower.url}/healthcheck", headers=basic(CREDENTIALS)) == (200, b"OK")

    def metrics() -> bytes:
        status, body = http_get(f"{flower.url}/metrics", headers=basic(CREDENTIALS), timeout=30)
        assert status == 200, body
        return body

    wait_until(
        lambda: f'worker="{worker.name}@'.encode() in metrics(), SETTLE_SECONDS, interval=1,
        message=lambda: f"{metrics()[-2000:]!r}\n{flower.log_tail(20)}",
    )


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
        listened = listened or embedded.port_open(flower.port)
        assert time.monotonic() < deadline, f"Flower is still running without usable basic auth\n{flower.log_tail()}"
        time.sleep(0.05)

    output = flower.log_path.read_text()
    assert flower.process.returncode != 0, output
    assert "FLOWER_BASIC_AUTH" in output and "user:password" in output, output
    assert "Traceback" not in output, output
    assert not listened and not embedded.port_open(flower.port)


# --- what an operator sees of billing in Flower ------------------------------------------------


def flower_json(flower, path: str):
    status, body = http_get(f"{flower.url}{path}", headers=basic(CREDENTIALS), timeout=30)
    assert status == 200, body
    return json.loads(body)


def queue_lengths(flower) -> dict[str, int | None]:
    return {queue["name"]: queue["messages"] for queue in flower_json(flower, "/api/queues/length")["active_queues"]}


def test_the_backlog_in_events_shows_with_no_worker_running(settings, factory, client, flower_process):
    from shared import db
    from worker import recording

    world = build_world(factory)
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()
    for _ in range(7):
        assert client.post(
            URL, json=world.body(), headers=world.headers()
        ).status_code == 202
    with db.transaction(settings.database_url) as session:  # three rows recorded, not reported
        recording.write_rows(session, [world.event() for _ in range(3)], value_decimals=6)

    expected = {"billing": 1, "billing:intake (accepted, not recorded)": 7, "billing:unreported (recorded, not reported)": 3}
    # ("billing" holds the one record task the first event's wake-up sent.)
    wait_until(lambda: queue_lengths(flower) == expected, 10, message=lambda: str(queue_lengths(flower)))
    status, page = http_get(f"{flower.url}/broker", headers=basic(CREDENTIALS))
    assert status == 200
    assert b"billing:intake (accepted, not recorded)" in page and b"billing:unreported (recorded, not reported)" in page


def test_searching_an_event_id_finds_the_tasks_that_recorded_and_reported_it(settings, factory, client, start_worker, flower_process):
    world = build_world(factory)
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()
    start_worker(settings)
    ids = []
    for _ in range(30):
        response = client.post(URL, json=world.body(), headers=world.headers())
        ids.append(response.get_json()["id"])
    wait_until(lambda: status_counts(settings) == {"reported": 30}, SETTLE_SECONDS, message=lambda: str(status_counts(settings)))

    def found(event_id: str) -> dict[str, dict]:
        tasks = flower_json(flower, f"/api/tasks?search={event_id}")
        return {task["name"]: task for task in tasks.values() if task["state"] == "SUCCESS"}

    for event_id in (ids[0], ids[17], ids[-1]):
        tasks = wait_until(lambda event_id=event_id: (found_ := found(event_id)).keys() >= {"billing.record", "billing.report"} and found_, 20)
        assert event_id in tasks["billing.record"]["result"] and "recorded_ids" in tasks["billing.record"]["result"]
        assert event_id in tasks["billing.report"]["result"] and "reported_ids" in tasks["billing.report"]["result"]


def test_an_idle_minute_adds_only_a_few_tasks(settings, start_worker, flower_process):
    """Nothing runs on a clock but beat's sweep (every 15 s): no empty drain ticks."""
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()
    start_worker(settings)
    wait_until(lambda: flower_json(flower, "/api/tasks"), SETTLE_SECONDS, message=flower.log_tail)  # the start-up sweep
    before = len(flower_json(flower, "/api/tasks"))

    time.sleep(60)

    tasks = flower_json(flower, "/api/tasks")
    added = len(tasks) - before
    assert added <= 5, sorted(task["name"] for task in tasks.values())
    assert {task["name"] for task in tasks.values()} == {"billing.sweep"}


def test_a_stripe_refusal_shows_as_a_retry_with_stripes_reason_and_a_failure_names_the_event(
    settings, factory, client, stripe, start_worker, flower_process
):
    world = build_world(factory, customer_ids=["cus_flower_retry", None])
    billed, no_customer = world.organizations
    flower = flower_process(settings, FLOWER_BASIC_AUTH=CREDENTIALS).start()
    stripe.set_faults(fail_next=1000, status=429)
    start_worker(settings)
    refused = client.post("/api/billing/external-usage", json=world.body(billed), headers=world.headers()).get_json()["id"]
    failing = client.post("/api/billing/external-usage", json=world.body(no_customer), headers=world.headers()).get_json()["id"]

    def tasks(state: str | None = None, search: str | None = None) -> list[dict]:
        query = "&".join(f"{k}={v}" for k, v in (("state", state), ("search", search)) if v)
        return list(flower_json(flower, f"/api/tasks?{query}").values())

    retrying = wait_until(
        lambda: [t for t in tasks("RETRY") if t["name"] == "billing.report"], SETTLE_SECONDS,
        message=lambda: str(tasks()),
    )
    assert "StripeRefused" in retrying[0]["exception"] and "429" in retrying[0]["exception"], retrying[0]

    failed_by = wait_until(
        lambda: [t for t in tasks("SUCCESS", failing) if t["name"] == "billing.report"], SETTLE_SECONDS,
        message=lambda: str(tasks()),
    )
    assert failing in failed_by[0]["result"] and "failed_ids" in failed_by[0]["result"]
    assert "has no Stripe customer id" in failed_by[0]["result"]

    stripe.set_faults(fail_next=0)
    wait_until(lambda: status_counts(settings) == {"reported": 1, "failed": 1}, SETTLE_SECONDS * 3, message=lambda: str(status_counts(settings)))
    reported_by = wait_until(lambda: [t for t in tasks("SUCCESS", refused) if t["name"] == "billing.report"], 20)
    assert refused in reported_by[0]["result"]
