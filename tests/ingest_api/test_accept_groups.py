"""Concurrent accepts in one web process share one accept-script call (``shared.intake``'s
group commit: one round trip, one fsync), and each event of a group is answered as if it
had been sent alone. Through the real web process (gunicorn with gevent, where the
grouping happens) and a Redis of the test's own, whose command count shows how many
script calls a group took. The in-process cases of a group (a lost reply in the middle
of one) are in ``test_broker_unavailable.py``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
import sqlalchemy as sa

from shared import intake, models, revocation_marks
from shared.usage_event import AcceptedUsageEvent
from tests.support.billing import URL
from tests.support.service_processes import GunicornProcess

# Long enough for requests sent at once to reach the web process within it.
WINDOW_SECONDS = 0.5
TASK_QUEUE = "billing"  # celeryconfig.task_default_queue: where the web's record task goes


def script_calls(broker: redis.Redis) -> int:
    return int(broker.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
def web(committed_database, settings, stripe, tmp_path, private_redis):
    server = GunicornProcess(
        settings.replace(broker_url=private_redis.url), stripe.url, tmp_path / "web", workers=1,
        extra_env={"ACCEPT_GROUP_WINDOW_SECONDS": str(WINDOW_SECONDS)},
    )
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_new_event_a_replay_a_conflict_and_a_revoked_caller_in_one_group_each_get_their_own_answer(
    billing, factory, session, web, private_redis
):
    broker = redis.Redis.from_url(private_redis.url, decode_responses=True)
    revoked_token = factory.app_password(billing.caller, name="revoked-soon")
    (revoked_id,) = session.scalars(sa.select(models.AppPassword.id).where(models.AppPassword.name == "revoked-soon"))

    def post(body: dict, token: str = billing.app_password, key: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} | ({"Idempotency-Key": key} if key else {})
        return requests.post(f"{web.url}{URL}", json=body, headers=headers, timeout=10)

    first = post(billing.body(input_tokens=1), key="order-1")
    assert first.status_code == 202, first.text
    # Verified, and so cached by the web process: only the accept script can refuse it now.
    assert post(billing.body(input_tokens=2), token=revoked_token).status_code == 202
    revocation_marks.mark_revoked(broker, revoked_id)
    broker.delete(intake.RECORDER_WANTED_KEY)  # as if the recorder had drained the intake
    calls_before, tasks_before = script_calls(broker), broker.llen(TASK_QUEUE)

    with ThreadPoolExecutor(4) as pool:
        new, replay, conflict, refused = pool.map(lambda args: post(*args), [
            (billing.body(input_tokens=3),),
            (billing.body(input_tokens=1), billing.app_password, "order-1"),
            (billing.body(input_tokens=99), billing.app_password, "order-1"),
            (billing.body(input_tokens=4), revoked_token),
        ])

    assert script_calls(broker) - calls_before == 1  # one call for the four
    assert new.status_code == 202 and new.json()["status"] == "queued", new.text
    assert new.json()["id"] != first.json()["id"]
    assert (replay.status_code, replay.json()) == (200, {"id": first.json()["id"], "status": "queued"})
    assert replay.headers["Location"].endswith(first.json()["id"])
    assert conflict.status_code == 409 and "different body" in conflict.json()["error"], conflict.text
    assert refused.status_code == 401, refused.text
    # Appended: the new event only (besides the two of before), nothing of the conflict
    # or of the revoked caller; and one record task woken for the group.
    queued = [AcceptedUsageEvent.from_message(fields["event"]) for _, fields in broker.xrange(intake.STREAM)]
    assert [event.input_tokens for event in queued] == [1, 2, 3]
    assert str(queued[-1].id) == new.json()["id"]
    assert broker.llen(TASK_QUEUE) - tasks_before == 1
    status = requests.get(f"{web.url}{URL}/{new.json()['id']}", headers={"Authorization": f"Bearer {billing.app_password}"}, timeout=10)
    assert (status.status_code, status.json()["status"]) == (200, "queued")
    broker.close()
