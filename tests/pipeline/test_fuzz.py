"""Property-based fuzzing through the real pipeline (hypothesis): whatever a caller sends,
to either endpoint, billing goes on.

Bodies are drawn from all of Unicode (NUL, lone surrogates, controls, noncharacters,
astral characters), odd numbers (huge, negative, floats), odd structures (deep, wide,
wrong types) and raw bytes, in every field, single and batch; then posted to the edge
while a real Celery worker records and reports against the local Stripe server. Every
run ends with these true:

- no answer is a 5xx;
- each event answered 2xx ends as exactly one row (reported, or failed with a reason)
  or one rejected record, never both, never none;
- events sent after the odd ones are reported as fast as usual.
"""

from __future__ import annotations

import collections
import json
import time
import uuid

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st

from shared import db, models
from tests.pipeline.conftest import make_world
from tests.support.billing import BATCH_URL, URL
from tests.support.children import wait_until

pytestmark = pytest.mark.slow

# Every code point, surrogates included (hypothesis leaves them out by default).
ANY_CHARACTER = st.characters(codec=None, categories=None) | st.sampled_from(
    ["\x00", "\ud800", "\udfff", "\x1b", "\x7f", "\x85", "\ufdd0", "\ufffe", "\uffff", "\U0010ffff", "\u2028", "\u200d"]
)
ODD_TEXT = st.text(ANY_CHARACTER, max_size=80)
ODD_NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2_147_483_647, 2_147_483_648, -1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
ODD_JSON = st.recursive(
    st.none() | st.booleans() | ODD_NUMBER | ODD_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ODD_TEXT, children, max_size=4),
    max_leaves=20,
)
FIELDS = ["user_id", "organization_id", "model_name", "input_tokens", "output_tokens", "service_name", "source", "occurred_at"]
REPORTED_AS_FAST_AS_USUAL_SECONDS = 15


def bodies(world) -> st.SearchStrategy[dict]:
    """A valid event with up to three of its fields replaced by odd values or left out,
    or a field it must not have: many are refused, a good share accepted (``source``
    takes any text that can be stored, so odd-but-storable Unicode gets through)."""
    valid = world.body()

    @st.composite
    def body(draw) -> dict:
        drawn = dict(valid)
        for field in draw(st.sets(st.sampled_from([*FIELDS, "surplus"]), max_size=3)):
            if field in drawn and draw(st.booleans()):
                del drawn[field]
            else:
                drawn[field] = draw(ODD_TEXT | ODD_NUMBER | ODD_JSON | st.just(f"{valid.get(field, '')}\x00"))
        return drawn

    return body()


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bytes that are not quite JSON, or JSON nested far too deep."""
    return st.one_of(
        st.binary(max_size=200),
        st.integers(min_value=1, max_value=40_000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(min_value=1, max_value=20_000).map(lambda depth: b'{"events": ' + b"[" * depth + b"]" * depth + b"}"),
        ODD_JSON.map(lambda value: json.dumps(value).encode()),
    )


def test_no_body_stops_billing(settings, factory, client, stripe, start_worker):
    world = make_world(factory, organizations=2)
    worker = start_worker(settings)
    headers = world.headers()
    accepted: set[uuid.UUID] = set()
    answers: list[int] = []

    def answered(response, *, batch: bool) -> None:
        answers.append(response.status_code)
        assert response.status_code < 500, response.get_data(as_text=True)[:500]
        body = response.get_json()
        assert isinstance(body, dict), response.get_data()[:200]
        if response.status_code >= 400:
            assert isinstance(body.get("error"), str) and body["error"], body
        elif batch:
            accepted.update(uuid.UUID(r["id"]) for r in body["results"] if r["status"] == "queued")
        else:
            accepted.add(uuid.UUID(body["id"]))

    @hypothesis.settings(
        max_examples=250, deadline=None, database=None,
        suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
    )
    @hypothesis.given(
        single=bodies(world),
        batch=st.lists(bodies(world) | ODD_JSON, min_size=1, max_size=12),
        raw=raw_bodies(),
        key=st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20),
    )
    def post(single, batch, raw, key):
        extra = {"Idempotency-Key": key} if key else {}
        answered(client.post(URL, json=single, headers=headers | extra), batch=False)
        answered(client.post(BATCH_URL, json={"events": batch}, headers=headers), batch=True)
        answered(client.post(URL, data=raw, headers=headers | {"Content-Type": "application/json"}), batch=False)
        answered(client.post(BATCH_URL, data=raw, headers=headers | {"Content-Type": "application/json"}), batch=True)

    post()
    assert accepted, "the fuzzing accepted nothing: it only tested refusals"

    # Events sent after the odd ones are reported as fast as usual.
    started = time.monotonic()
    normal = [uuid.UUID(client.post(URL, json=world.body(), headers=headers).get_json()["id"]) for _ in range(20)]
    wait_until(lambda: reported(settings, normal), REPORTED_AS_FAST_AS_USUAL_SECONDS, message=worker.log_tail)
    assert time.monotonic() - started < REPORTED_AS_FAST_AS_USUAL_SECONDS

    # Each accepted event is exactly one row (reported or failed) or one rejected record.
    def settled():
        rows, rejected = outcome(settings, accepted)
        return set(rows) | set(rejected) == accepted and all(status in ("reported", "failed") for status in rows.values())

    wait_until(settled, 90, message=lambda: f"{len(accepted)} accepted; {outcome(settings, accepted)}\n{worker.log_tail()}")
    rows, rejected = outcome(settings, accepted)
    assert not set(rows) & set(rejected), "an event is both a row and a rejected record"
    assert len(rows) + len(rejected) == len(accepted)
    statuses = collections.Counter(answers)
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[400] and statuses[422] and statuses[202], f"the fuzzing missed a kind of answer: {statuses}"


def reported(settings, ids) -> bool:
    rows, _ = outcome(settings, set(ids))
    return len(rows) == len(ids) and set(rows.values()) == {"reported"}


def outcome(settings, ids: set[uuid.UUID]) -> tuple[dict[uuid.UUID, str], set[uuid.UUID]]:
    logs, rejected = models.UserBillableRequestLog, models.RejectedUsageEvent
    with db.transaction(settings.database_url) as session:
        rows = dict(session.execute(sa.select(logs.id, logs.status).where(logs.id.in_(ids))).all())
        kept = set(session.scalars(sa.select(rejected.id).where(rejected.id.in_(ids))))
    return rows, kept
