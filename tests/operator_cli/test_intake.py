"""``intake waiting`` and ``intake set-aside``: what an operator does when recording stops
moving. Real PostgreSQL and Redis: the entries are in the intake stream, the kept event in
``rejected_usage_events``."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import redis
import sqlalchemy as sa

from shared import db, intake, models
from shared.usage_event import AcceptedUsageEvent
from tests.support.operator_commands import last_line


@pytest.fixture
def intake_broker(settings):
    """A client of this run's Redis (decoded strings) with the intake's consumer group created."""
    client = redis.Redis.from_url(settings.broker_url, decode_responses=True)
    intake.ensure_group(client)
    yield client
    client.close()


def append(intake_broker, message: str) -> str:
    return intake_broker.xadd(intake.STREAM, {intake.EVENT_FIELD: message})


def an_event() -> AcceptedUsageEvent:
    now = dt.datetime.now(dt.UTC)
    return AcceptedUsageEvent(
        id=uuid.uuid4(), user_id=uuid.uuid4(), organization_id=uuid.uuid4(), service_name="transcription",
        model_name="gpt-4o-mini", input_tokens=12, output_tokens=3, source="api", occurred_at=now,
        received_at=now, caller_user_id=uuid.uuid4(),
    )


def rejected_rows(settings) -> list[models.RejectedUsageEvent]:
    with db.transaction(settings.database_url) as session:
        return list(session.scalars(sa.select(models.RejectedUsageEvent)))


def test_waiting_on_an_empty_intake_says_so(runner):
    result = runner.invoke(args=["intake", "waiting"])

    assert result.exit_code == 0, result.output
    assert "The intake is empty" in result.output
    as_json = runner.invoke(args=["intake", "waiting", "--json"])
    assert json.loads(as_json.stdout) == {"waiting": 0, "entries": []}


def test_waiting_lists_the_oldest_entries_with_age_deliveries_and_event(runner, intake_broker):
    stuck, behind = an_event(), an_event()
    stuck_entry = append(intake_broker, stuck.to_message())
    behind_entry = append(intake_broker, behind.to_message())
    unreadable_entry = append(intake_broker, "{not json")
    # A worker was handed the oldest entry and never acknowledged it (it failed on it).
    intake.IntakeReader(intake_broker, consumer="worker-1").next_batch(1)

    result = runner.invoke(args=["intake", "waiting", "--limit", "2", "--json"])

    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["waiting"] == 3
    first, second = listing["entries"]
    assert (first["entry"], first["id"], first["deliveries"], first["consumer"]) == (
        stuck_entry, str(stuck.id), 1, "worker-1"
    )
    assert first["organization_id"] == str(stuck.organization_id) and first["model_name"] == "gpt-4o-mini"
    assert (second["entry"], second["id"], second["deliveries"]) == (behind_entry, str(behind.id), 0)
    assert all(0 <= entry["age_seconds"] < 60 for entry in listing["entries"])

    table = runner.invoke(args=["intake", "waiting"])
    assert "3 entries waiting; the oldest 3:" in table.output
    assert unreadable_entry in table.output and "(unreadable)" in table.output


def test_set_aside_keeps_the_entry_as_a_rejected_event_with_the_reason_and_removes_it(runner, intake_broker, settings):
    stuck, behind = an_event(), an_event()
    stuck_entry = append(intake_broker, stuck.to_message())
    append(intake_broker, behind.to_message())

    result = runner.invoke(args=["intake", "set-aside", "--entry", stuck_entry, "--reason", "odd source, ticket 42"])

    assert result.exit_code == 0, result.output
    assert last_line(result) == str(stuck.id)
    (kept,) = rejected_rows(settings)
    assert kept.id == stuck.id and kept.payload["id"] == str(stuck.id)
    assert kept.reason == "Set aside by an operator: odd source, ticket 42"
    assert [fields[intake.EVENT_FIELD] for _, fields in intake_broker.xrange(intake.STREAM)] == [behind.to_message()]


def test_set_aside_of_an_unreadable_entry_keeps_it_under_an_id_derived_from_the_entry(runner, intake_broker, settings):
    entry_id = append(intake_broker, '{"source": "a\x00b"')

    result = runner.invoke(args=["intake", "set-aside", "--entry", entry_id, "--reason", "hand-made entry"])

    assert result.exit_code == 0, result.output
    (kept,) = rejected_rows(settings)
    assert str(kept.id) == last_line(result)
    assert kept.payload == {"stream_entry": entry_id, "message": '{"source": "a\\u0000b"'}
    assert intake_broker.xlen(intake.STREAM) == 0


@pytest.mark.parametrize(
    ("entry", "exit_code", "message"),
    [
        ("not-an-id", 2, "is not a stream entry id"),
        ("1-0", 1, "No intake entry 1-0."),
    ],
    ids=["malformed-id", "no-such-entry"],
)
def test_set_aside_refuses_what_is_not_a_waiting_entry_and_writes_nothing(runner, intake_broker, settings, entry, exit_code, message):
    waiting = append(intake_broker, an_event().to_message())

    result = runner.invoke(args=["intake", "set-aside", "--entry", entry, "--reason", "x"])

    assert result.exit_code == exit_code
    assert message in result.output
    assert rejected_rows(settings) == []
    assert [entry_id for entry_id, _ in intake_broker.xrange(intake.STREAM)] == [waiting]


def test_an_entry_that_is_not_utf_8_is_listed_and_set_aside_not_a_crash(runner, intake_broker, settings):
    """Only a hand-made entry could hold such bytes; the unblocking commands must still work on it."""
    raw = redis.Redis.from_url(settings.broker_url)
    entry_id = raw.xadd(intake.STREAM, {intake.EVENT_FIELD: b'{"source": "\xff"}'}).decode()
    raw.close()

    listing = runner.invoke(args=["intake", "waiting"])
    assert listing.exit_code == 0, listing.output
    assert entry_id in listing.output and "(unreadable)" in listing.output

    result = runner.invoke(args=["intake", "set-aside", "--entry", entry_id, "--reason", "not UTF-8"])
    assert result.exit_code == 0, result.output
    (kept,) = rejected_rows(settings)
    assert kept.payload == {"stream_entry": entry_id, "message": '{"source": "\\xff"}'}
    assert intake_broker.xlen(intake.STREAM) == 0
