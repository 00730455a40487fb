"""Recording: from accepted events (and the intake stream) to exactly one
``user_billable_request_logs`` row per event (``worker.recording``, real PostgreSQL and Redis)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
import redis

from shared import db, intake, models
from shared.intake import Intake, fingerprint
from tests.support.billing import BATCH_URL, PRICES, URL, forget_idempotency_claims, log_rows
from tests.support.expected_bills import MAX_TOKENS, expected_costs, expected_stripe_value, rejected_rows
from tests.support.intake_stream import stream_state
from worker import recording

# "A readable reason": one sentence, capitalised, ending with a full stop.
SENTENCE = re.compile(r"[A-Z][^\n]*\.")


def record(settings, events) -> recording.Recording:
    with db.transaction(settings.database_url) as session:
        return recording.write_rows(session, events, value_decimals=settings.stripe_value_decimals)


def drain(settings, broker) -> recording.Recording:
    """What a chain of record tasks does: batch after batch until nothing is left to read."""
    total = recording.Recording()
    reader = intake.IntakeReader(broker)
    while True:
        count, result = recording.record_next_batch(
            lambda: db.transaction(settings.database_url), reader, value_decimals=settings.stripe_value_decimals
        )
        if not count:
            return total
        total.recorded += result.recorded
        total.rejected |= result.rejected
        total.organizations |= result.organizations


def rows_by_id(settings) -> dict[uuid.UUID, models.UserBillableRequestLog]:
    return {row.id: row for row in log_rows(settings)}


# --- record() ---------------------------------------------------------------------------------


def test_record_writes_one_row_with_exact_costs(settings, world):
    event = world.event(model_name="precise-model", input_tokens=MAX_TOKENS, output_tokens=1200, idempotency_key="k-1")

    result = record(settings, [event])

    assert result.recorded == [event.id] and result.rejected == {}
    assert result.organizations == {world.organization.id}
    (row,) = log_rows(settings)
    service_cost, agent700_cost = expected_costs(PRICES["precise-model"], MAX_TOKENS, 1200)
    assert row.id == event.id
    assert (row.service_cost, row.agent700_cost) == (service_cost, agent700_cost)
    assert row.stripe_value == expected_stripe_value(agent700_cost)
    assert row.text_model_cost_id == world.prices["precise-model"].id
    assert row.service_id == world.service.id
    assert row.agent_id is None
    assert (row.user_id, row.organization_id, row.caller_user_id) == (world.user.id, world.organization.id, world.caller.id)
    assert (row.model_name, row.input_tokens, row.output_tokens, row.source) == ("precise-model", MAX_TOKENS, 1200, "external_api")
    assert (row.occurred_at, row.received_at) == (event.occurred_at, event.received_at)
    assert row.idempotency_key == "k-1"
    assert (row.status, row.stripe_identifier, row.stripe_attempts) == ("recorded", str(event.id), 0)
    assert (row.stripe_reported_at, row.error) == (None, None)
    assert rejected_rows(settings) == []


@pytest.mark.parametrize("model", list(PRICES))
@pytest.mark.parametrize(("input_tokens", "output_tokens"), [(0, 0), (1, 0), (0, 1), (MAX_TOKENS, MAX_TOKENS)])
def test_recorded_costs_survive_postgresql_to_the_last_decimal(settings, world, model, input_tokens, output_tokens):
    event = world.event(model_name=model, input_tokens=input_tokens, output_tokens=output_tokens)

    record(settings, [event])

    (row,) = log_rows(settings)
    service_cost, agent700_cost = expected_costs(PRICES[model], input_tokens, output_tokens)
    assert (row.service_cost, row.agent700_cost, row.stripe_value) == (
        service_cost, agent700_cost, expected_stripe_value(agent700_cost),
    )


def test_a_price_change_applies_from_its_effective_from(settings, world, factory):
    change = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    new = factory.price(
        "gpt-4o-mini", input_cost="0.0000002", output_cost="0.0000008",
        agent700_input_cost="0.0000004", agent700_output_cost="0.0000016", effective_from=change,
    )
    old = world.prices["gpt-4o-mini"]
    before = world.event(occurred_at=change - dt.timedelta(microseconds=1))
    at = world.event(occurred_at=change)
    after = world.event(occurred_at=change + dt.timedelta(hours=3))
    long_before = world.event(occurred_at=change - dt.timedelta(days=20))

    record(settings, [before, at, after, long_before])

    rows = rows_by_id(settings)
    assert rows[before.id].text_model_cost_id == old.id
    assert rows[long_before.id].text_model_cost_id == old.id
    assert rows[at.id].text_model_cost_id == new.id
    assert rows[after.id].text_model_cost_id == new.id
    # 1200 × rate_in + 340 × rate_out, with each row's own rates
    assert (rows[before.id].service_cost, rows[before.id].agent700_cost) == (Decimal("0.000384"), Decimal("0.000768"))
    assert (rows[at.id].service_cost, rows[at.id].agent700_cost) == (Decimal("0.000512"), Decimal("0.001024"))
    assert rows[after.id].agent700_cost == Decimal("0.001024") and rows[after.id].stripe_value == 1024


def test_the_same_event_recorded_twice_makes_one_row(settings, world):
    event = world.event()

    first = record(settings, [event])
    again = record(settings, [event])
    twice_in_one_batch = record(settings, [event, event])

    assert first.recorded == [event.id]
    assert again.recorded == [] and again.rejected == {}
    assert twice_in_one_batch.rejected == {}
    assert list(rows_by_id(settings)) == [event.id]
    assert rejected_rows(settings) == []


def test_the_same_event_twice_in_its_first_batch_makes_one_row(settings, world):
    event = world.event()

    result = record(settings, [event, event])

    assert set(result.recorded) == {event.id} and result.rejected == {}
    assert list(rows_by_id(settings)) == [event.id]


@pytest.mark.parametrize("same_batch", [False, True])
def test_two_events_with_the_same_caller_and_idempotency_key_make_one_row(settings, world, same_batch):
    first = world.event(idempotency_key="retry-me")
    second = world.event(idempotency_key="retry-me", input_tokens=1)  # a retry the edge could not match
    other_caller = world.event(idempotency_key="retry-me", caller_user_id=world.user.id)  # another caller's key

    if same_batch:
        result = record(settings, [first, second, other_caller])
    else:
        record(settings, [first, other_caller])
        result = record(settings, [second])

    assert set(rows_by_id(settings)) == {first.id, other_caller.id}
    assert set(result.rejected) == {second.id}
    (rejection,) = rejected_rows(settings)
    assert rejection.id == second.id
    assert str(first.id) in rejection.reason and "Idempotency-Key" in rejection.reason
    assert SENTENCE.fullmatch(rejection.reason), rejection.reason
    assert rejection.payload["id"] == str(second.id) and rejection.payload["input_tokens"] == 1
    assert rejection.resolved_at is None


@pytest.mark.parametrize(
    ("change", "reason_part"),
    [
        ({"service_name": "no-such-service"}, "Unknown service 'no-such-service'"),
        ({"model_name": "no-such-model"}, "No price for model 'no-such-model'"),
        ({"occurred_at": dt.datetime(2019, 12, 31, 23, 59, 59, tzinfo=dt.UTC)}, "No price for model 'gpt-4o-mini' in effect at 2019-12-31"),
        ({"organization_id": uuid.uuid4()}, "Unknown organization"),
        ({"user_id": uuid.uuid4()}, "Unknown user"),
    ],
)
def test_an_event_that_cannot_be_billed_is_kept_with_a_readable_reason(settings, world, change, reason_part):
    bad = world.event(**change)
    good = world.event()

    result = record(settings, [bad, good])

    assert result.recorded == [good.id]
    assert list(rows_by_id(settings)) == [good.id]
    (rejection,) = rejected_rows(settings)
    assert rejection.id == bad.id
    assert reason_part in rejection.reason
    assert SENTENCE.fullmatch(rejection.reason), rejection.reason
    assert result.rejected == {bad.id: rejection.reason}
    assert rejection.payload["id"] == str(bad.id)
    assert (rejection.attempts, rejection.resolved_at) == (1, None)


def test_a_rejected_event_is_recorded_once_its_cause_is_fixed(settings, world, factory):
    event = world.event(service_name="summaries")
    record(settings, [event])
    record(settings, [event])
    (rejection,) = rejected_rows(settings)
    assert rejection.attempts == 2 and rejection.resolved_at is None

    factory.service("summaries")
    result = record(settings, [event])

    assert result.recorded == [event.id]
    (row,) = log_rows(settings)
    assert row.service_id is not None and row.agent700_cost == Decimal("0.000768")
    (rejection,) = rejected_rows(settings)
    assert rejection.resolved_at is not None


# --- the intake stream: drain() ---------------------------------------------------------------


def accept(settings, events) -> None:
    accepted = Intake(settings.broker_url, 2.0).accept([(e, fingerprint(e.to_message().encode())) for e in events])
    assert [a.status for a in accepted.acceptances] == ["queued"] * len(events)


def test_drain_records_what_the_web_queued_and_clears_the_stream(settings, world, broker):
    events = [world.event(input_tokens=n, output_tokens=2 * n) for n in range(25)]
    accept(settings, events)
    assert stream_state(settings.broker_url) == {"entries": 25, "pending": 0, "queued": 25}

    result = drain(settings, broker)

    assert sorted(result.recorded) == sorted(e.id for e in events)
    assert result.organizations == {world.organization.id}
    rows = rows_by_id(settings)
    assert set(rows) == {e.id for e in events}
    for event in events:
        assert rows[event.id].agent700_cost == expected_costs(PRICES["gpt-4o-mini"], event.input_tokens, event.output_tokens)[1]
    # acknowledged, deleted from the stream, and the "queued" status records gone
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}


def test_drain_records_events_posted_through_the_batch_endpoint(settings, world, client, broker):
    bodies = [world.body(model_name=model, input_tokens=7, output_tokens=11) for model in PRICES for _ in range(3)]
    response = client.post(BATCH_URL, json={"events": bodies}, headers=world.headers())
    ids = [uuid.UUID(r["id"]) for r in response.get_json()["results"]]
    assert len(ids) == 9

    drain(settings, broker)

    rows = rows_by_id(settings)
    assert set(rows) == set(ids)
    for event_id, body in zip(ids, bodies, strict=True):
        assert rows[event_id].agent700_cost == expected_costs(PRICES[body["model_name"]], 7, 11)[1]
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}
    # What the API reports afterwards comes from the row.
    status = client.get(f"/api/billing/external-usage/{ids[0]}", headers=world.headers()).get_json()
    assert status["status"] == "recorded" and status["agent700_cost"] == str(rows[ids[0]].agent700_cost)


def test_the_same_message_added_twice_makes_one_row(settings, world, broker):
    event = world.event()
    intake.ensure_group(broker)
    broker.xadd(intake.STREAM, {intake.EVENT_FIELD: event.to_message()})
    broker.xadd(intake.STREAM, {intake.EVENT_FIELD: event.to_message()})

    drain(settings, broker)
    broker.xadd(intake.STREAM, {intake.EVENT_FIELD: event.to_message()})  # a third, after the row exists
    drain(settings, broker)

    assert list(rows_by_id(settings)) == [event.id]
    assert rejected_rows(settings) == []
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}


def test_entries_of_a_dead_consumer_are_claimed_and_recorded_once(settings, world, broker, monkeypatch):
    events = [world.event() for _ in range(3)]
    accept(settings, events)
    intake.ensure_group(broker)
    # A consumer reads them and dies before recording anything.
    broker.xreadgroup(intake.GROUP, "dead-worker", {intake.STREAM: ">"}, count=10)
    assert stream_state(settings.broker_url)["pending"] == 3

    drain(settings, broker)  # not idle long enough yet: left alone
    assert log_rows(settings) == []

    monkeypatch.setattr(intake, "CLAIM_IDLE_MS", 0)
    drain(settings, broker)

    assert set(rows_by_id(settings)) == {e.id for e in events}
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}


def test_a_crash_between_commit_and_acknowledgement_records_once(settings, world, broker, monkeypatch):
    events = [world.event() for _ in range(4)]
    accept(settings, events)

    def crash(self, entries, event_ids):
        raise ConnectionError("worker killed after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(intake.IntakeReader, "acknowledge", crash)
        with pytest.raises(ConnectionError):
            drain(settings, broker)
    assert len(log_rows(settings)) == 4
    assert stream_state(settings.broker_url)["pending"] == 4

    # The same consumer (same process) takes its own pending entries first.
    result = drain(settings, broker)

    assert result.recorded == [] and result.rejected == {}
    assert set(rows_by_id(settings)) == {e.id for e in events}
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}


@pytest.mark.parametrize(
    ("message", "kept_as"),
    [
        ('{"not": "an event"}', '{"not": "an event"}'),
        ('{"source": "a\u0000b"}', '{"source": "a\\u0000b"}'),
        (b'{"source": "\xff"}', '{"source": "\\xff"}'),
    ],
    ids=["not-an-event", "nul-in-text", "not-utf-8"],
)
def test_an_unreadable_message_is_kept_not_dropped_and_the_rest_is_recorded(settings, world, broker, message, kept_as):
    """Never written by the edge, but a hand-made entry (even one whose text PostgreSQL
    refuses, NUL, or that is not UTF-8 at all) is kept, written out readable, and does not
    hold up the events after it."""
    intake.ensure_group(broker)
    raw = redis.Redis.from_url(settings.broker_url)  # bytes as given, as a hand-made entry is
    entry_id = raw.xadd(intake.STREAM, {intake.EVENT_FIELD: message}).decode()
    raw.close()
    good = world.event()
    broker.xadd(intake.STREAM, {intake.EVENT_FIELD: good.to_message()})

    drain(settings, broker)

    assert list(rows_by_id(settings)) == [good.id]
    (rejection,) = rejected_rows(settings)
    assert rejection.payload["stream_entry"] == entry_id
    assert rejection.payload["message"] == kept_as
    assert rejection.reason.startswith("Unreadable queue message")
    assert stream_state(settings.broker_url)["entries"] == 0


# --- one event never holds up another -----------------------------------------------------------


@pytest.mark.parametrize("source", ["a\x00b", "\x00"], ids=["nul-inside", "nul-alone"])
def test_an_event_postgresql_cannot_store_fails_alone_and_the_rest_is_recorded(settings, world, broker, client, source):
    """Defence in depth: the edge refuses such text, but an event that reaches the
    recorder anyway (an older edge, a hand-made entry) is kept aside with a readable
    reason, stored escaped, and never stops the events around it."""
    before = [world.event(input_tokens=n) for n in range(3)]
    poison = world.event(source=source)
    after = [world.event(input_tokens=100 + n) for n in range(3)]
    accept(settings, [*before, poison, *after])

    result = drain(settings, broker)

    assert set(result.recorded) == {e.id for e in before + after}
    assert set(rows_by_id(settings)) == {e.id for e in before + after}
    (rejection,) = rejected_rows(settings)
    assert rejection.id == poison.id and rejection.resolved_at is None
    assert rejection.reason.startswith("Could not be stored: ") and "NUL" in rejection.reason, rejection.reason
    assert rejection.payload["source"] == source.replace("\x00", "\\u0000")
    assert stream_state(settings.broker_url) == {"entries": 0, "pending": 0, "queued": 0}
    status = client.get(f"{URL}/{poison.id}", headers=world.headers()).get_json()
    assert (status["status"], status["error"]) == ("failed", rejection.reason)


def test_an_event_stuck_in_a_batch_does_not_fail_the_batch_again_and_again(settings, world, broker):
    """The first version of the recorder retried the whole batch for ever on one such
    event: one drain now settles everything."""
    accept(settings, [world.event(source="x\x00"), world.event()])

    first = drain(settings, broker)
    second = drain(settings, broker)

    assert len(first.recorded) == 1 and len(first.rejected) == 1
    assert second.recorded == [] and second.rejected == {}


def test_a_keyed_event_posted_after_its_redis_claim_expired_is_answered_from_its_row(settings, world, client, broker):
    """The key is kept for ever: once recorded, the row answers a replay of the key whose
    24-hour claim in Redis is gone, the batch's per-event keys included."""
    body, headers = world.body(input_tokens=5), world.headers() | {"Idempotency-Key": "job-77/turn-1"}
    first = client.post(URL, json=body, headers=headers)
    batch_first = client.post(BATCH_URL, json={"events": [world.body(idempotency_key="job-77/turn-2")]}, headers=world.headers())
    drain(settings, broker)
    forget_idempotency_claims(settings.broker_url)

    replay = client.post(URL, json=body, headers=headers)
    other_body = client.post(URL, json=world.body(input_tokens=6), headers=headers)
    batch_replay = client.post(
        BATCH_URL,
        json={"events": [world.body(idempotency_key="job-77/turn-2"), world.body(idempotency_key="job-77/turn-1")]},
        headers=world.headers(),
    )

    assert replay.status_code == 200, replay.get_json()
    assert replay.get_json() == {"id": first.get_json()["id"], "status": "recorded"}
    assert other_body.status_code == 409, other_body.get_json()
    results = batch_replay.get_json()["results"]
    assert results[0] == {"index": 0, "id": batch_first.get_json()["results"][0]["id"], "status": "duplicate"}
    assert results[1]["status"] == "rejected" and "different body" in results[1]["error"]
    assert stream_state(settings.broker_url)["entries"] == 0
    assert len(rows_by_id(settings)) == 2
