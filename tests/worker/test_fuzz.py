"""Property-based fuzzing through the real pipeline (hypothesis): whatever a caller sends,
to either endpoint, billing goes on.

Bodies are drawn from all of Unicode (NUL, lone surrogates, controls, noncharacters,
astral characters), odd numbers (huge, negative, floats), odd structures (deep, wide,
wrong types) and raw bytes, in every field, single and batch; ``occurred_at`` in every
UTC offset RFC 3339 can write (to ±23:59, minutes too) and at the billing window's edges
(just inside and just outside the oldest the edge accepts and the 5 minutes ahead);
then posted to the edge while a real Celery worker records and reports against the
local Stripe server. Every run ends with these true:

- no answer is a 5xx;
- each event answered 2xx ends as exactly one reported row: none fails for what it
  holds, and none is set aside as a rejected event;
- events sent after the odd ones are reported as fast as usual.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import time
import uuid

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st

from devtools.children import wait_until
from shared import billing_window, db, models
from tests.support.billing import BATCH_URL, URL, build_world_with_every_price

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
# Every offset RFC 3339 can write, and the ones either side of what PostgreSQL stores.
UTC_OFFSET_MINUTES = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59) | st.sampled_from(
    [0, 15 * 60 + 59, -(15 * 60 + 59), 16 * 60, -16 * 60, 23 * 60 + 59, -(23 * 60 + 59)]
)
# Seconds either side of an edge of the window: more than the time from drawing a body
# to its request, so that inside is inside when the edge judges it.
NEAR_EDGE = st.integers(min_value=2, max_value=30).map(lambda seconds: dt.timedelta(seconds=seconds))


@st.composite
def occurred_at(draw) -> str:
    """An RFC 3339 time in any UTC offset: anywhere in the billing window, or just inside
    or just outside one of its two edges, as of now."""
    now = dt.datetime.now(dt.UTC)
    oldest, latest = now - billing_window.MAX_ACCEPTED_AGE, now + billing_window.MAX_ACCEPTED_LEAD
    near, inside = draw(NEAR_EDGE), draw(st.booleans())
    moment = draw(
        st.sampled_from([
            oldest + near if inside else oldest - near,
            latest - near if inside else latest + near,
            oldest + (latest - oldest) * draw(st.floats(min_value=0.001, max_value=0.999)),
        ])
    )
    zone = dt.timezone(dt.timedelta(minutes=draw(UTC_OFFSET_MINUTES)))
    written = moment.astimezone(zone).isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"])))
    return written.replace("+00:00", "Z") if draw(st.booleans()) else written


FIELDS = ["user_id", "organization_id", "model_name", "input_tokens", "output_tokens", "service_name", "source", "occurred_at"]
REPORTED_AS_FAST_AS_USUAL_SECONDS = 15


def bodies(world) -> st.SearchStrategy[dict]:
    """A valid event, half of them with an ``occurred_at`` of any offset and near the
    window's edges, with up to three of its fields replaced by odd values or left out, or
    a field it must not have: many are refused, a good share accepted (``source`` takes
    any text that can be stored, so odd-but-storable Unicode gets through)."""
    valid = world.body()

    @st.composite
    def body(draw) -> dict:
        drawn = dict(valid)
        if draw(st.booleans()):
            drawn["occurred_at"] = draw(occurred_at())
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
    world = build_world_with_every_price(factory, organizations=2)
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

    # Each accepted event is exactly one row, reported: the edge refused whatever a later
    # stage could not store, price or send (a failed row or a rejected event is one that
    # got through).
    def settled():
        rows, rejected = outcome(settings, accepted)
        return rejected or (set(rows) == accepted and all(status in ("reported", "failed") for status in rows.values()))

    wait_until(settled, 90, message=lambda: f"{len(accepted)} accepted; {outcome(settings, accepted)}\n{worker.log_tail()}")
    rows, rejected = outcome(settings, accepted)
    assert not rejected, f"accepted, then set aside: {rejected_reasons(settings, rejected)}"
    failed = {event_id for event_id, status in rows.items() if status != "reported"}
    assert not failed, f"accepted, then failed: {failed_reasons(settings, failed)}"
    assert len(rows) == len(accepted)
    statuses = collections.Counter(answers)
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[400] and statuses[422] and statuses[202], f"the fuzzing missed a kind of answer: {statuses}"


def failed_reasons(settings, ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None]]:
    logs = models.UserBillableRequestLog
    with db.transaction(settings.database_url) as session:
        return {row.id: (row.occurred_at.isoformat(), row.error) for row in session.execute(
            sa.select(logs.id, logs.occurred_at, logs.error).where(logs.id.in_(ids))
        )}


def rejected_reasons(settings, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    rejected = models.RejectedUsageEvent
    with db.transaction(settings.database_url) as session:
        return dict(session.execute(sa.select(rejected.id, rejected.reason).where(rejected.id.in_(ids))).all())


def reported(settings, ids) -> bool:
    rows, _ = outcome(settings, set(ids))
    return len(rows) == len(ids) and set(rows.values()) == {"reported"}


def outcome(settings, ids: set[uuid.UUID]) -> tuple[dict[uuid.UUID, str], set[uuid.UUID]]:
    logs, rejected = models.UserBillableRequestLog, models.RejectedUsageEvent
    with db.transaction(settings.database_url) as session:
        rows = dict(session.execute(sa.select(logs.id, logs.status).where(logs.id.in_(ids))).all())
        kept = set(session.scalars(sa.select(rejected.id).where(rejected.id.in_(ids))))
    return rows, kept
