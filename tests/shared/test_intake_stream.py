"""The intake stream's rules, checked against fakeredis (which runs the accept script's
Lua through lupa): fast, no server. What a real Redis adds (lost replies, restarts) is
in tests/ingest_api/test_broker_unavailable.py and the soak."""

from __future__ import annotations

import datetime as dt
import uuid

import fakeredis
import pytest

from shared import intake, revocation_marks
from shared.usage_event import AcceptedUsageEvent

CALLER = uuid.uuid4()


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis(decode_responses=True, single_connection_client=True)


@pytest.fixture
def stream(redis_client):
    return intake.Intake("redis://fakeredis", timeout_seconds=1.0, client=redis_client)


def event(idempotency_key: str | None = None) -> AcceptedUsageEvent:
    now = dt.datetime.now(dt.UTC)
    return AcceptedUsageEvent(
        id=uuid.uuid4(), user_id=uuid.uuid4(), organization_id=uuid.uuid4(), service_name="transcription",
        model_name="gpt-4o-mini", input_tokens=1, output_tokens=2, source="api", occurred_at=now,
        received_at=now, caller_user_id=CALLER, idempotency_key=idempotency_key,
    )


def queued_ids(redis_client) -> list[str]:
    return [AcceptedUsageEvent.from_message(fields["event"]).id for _, fields in redis_client.xrange(intake.STREAM)]


def test_an_accepted_event_is_appended_with_its_queued_record_and_key_claim_and_wakes_a_recorder_once(
    stream, redis_client
):
    first, second = event("key-1"), event()

    accepted = stream.accept([(first, "fp-1")])
    again = stream.accept([(second, "fp-2")])

    assert accepted.acceptances == [intake.Acceptance("queued", first.id)] and accepted.wake_recorder
    assert again.acceptances == [intake.Acceptance("queued", second.id)] and not again.wake_recorder
    assert queued_ids(redis_client) == [first.id, second.id]
    assert stream.queued_event(first.id) == first
    assert 0 < redis_client.ttl(intake.QUEUED_KEY.format(event_id=first.id)) <= intake.QUEUED_TTL_SECONDS
    claim = intake.idempotency_key_name(CALLER, "key-1")
    assert redis_client.get(claim) == f"{first.id} fp-1"
    assert 0 < redis_client.ttl(claim) <= intake.IDEMPOTENCY_TTL_SECONDS


def test_a_seen_key_answers_the_first_event_duplicate_with_the_same_body_conflict_with_another(stream, redis_client):
    first = event("key-1")
    stream.accept([(first, "fp-1")])

    same, other = stream.accept([(event("key-1"), "fp-1"), (event("key-1"), "fp-other")]).acceptances

    assert same == intake.Acceptance("duplicate", first.id)
    assert other == intake.Acceptance("conflict", first.id)
    assert queued_ids(redis_client) == [first.id]


def test_a_key_twice_in_one_batch_is_one_event(stream, redis_client):
    first, repeat = event("key-1"), event("key-1")

    acceptances = stream.accept([(first, "fp"), (repeat, "fp")]).acceptances

    assert acceptances == [intake.Acceptance("queued", first.id), intake.Acceptance("duplicate", first.id)]
    assert queued_ids(redis_client) == [first.id]


@pytest.mark.parametrize("idempotency_key", [None, "key-1"], ids=["keyless", "keyed"])
def test_the_same_call_run_again_after_a_lost_reply_is_not_appended_twice(stream, redis_client, idempotency_key):
    attempted = event(idempotency_key)
    stream.accept([(attempted, "fp")])

    retried = stream.accept([(attempted, "fp")])

    assert retried.acceptances == [intake.Acceptance("queued", attempted.id)]
    assert queued_ids(redis_client) == [attempted.id]


def test_a_revoked_app_password_appends_nothing_but_its_earlier_call_keeps_its_answer(stream, redis_client):
    app_password = uuid.uuid4()
    before = event()
    stream.accept([(before, "fp")], app_password)
    revocation_marks.mark_revoked(redis_client, app_password)

    with pytest.raises(intake.Revoked):
        stream.accept([(event("key-2"), "fp")], app_password)
    assert stream.accept([(before, "fp")], app_password).acceptances == [intake.Acceptance("queued", before.id)]
    assert queued_ids(redis_client) == [before.id]
    assert redis_client.get(intake.idempotency_key_name(CALLER, "key-2")) is None


def test_a_revoked_app_password_cannot_replay_a_key_but_its_own_keyed_call_keeps_its_answer(stream, redis_client):
    app_password = uuid.uuid4()
    before = event("key-1")
    stream.accept([(before, "fp")], app_password)
    reader = intake.IntakeReader(redis_client, "recorder-1")
    reader.acknowledge(reader.next_batch(10), [before.id])
    redis_client.delete(intake.QUEUED_KEY.format(event_id=before.id))  # recorded: only its claim is left
    revocation_marks.mark_revoked(redis_client, app_password)

    with pytest.raises(intake.Revoked):
        stream.accept([(event("key-1"), "fp")], app_password)  # a replay: another request, same key
    retried = stream.accept([(before, "fp")], app_password)  # the same call, its reply lost
    assert retried.acceptances == [intake.Acceptance("queued", before.id)]


def test_a_refused_append_leaves_nothing_behind(stream, redis_client):
    redis_client.set(intake.STREAM, "not a stream")
    refused = event("key-1")

    with pytest.raises(intake.QueueUnavailable):
        stream.accept([(refused, "fp")])

    assert redis_client.get(intake.QUEUED_KEY.format(event_id=refused.id)) is None
    assert redis_client.get(intake.idempotency_key_name(CALLER, "key-1")) is None
    assert redis_client.get(intake.RECORDER_WANTED_KEY) is None


def test_a_redrive_appends_the_event_again_with_its_id_whatever_its_key(stream, redis_client):
    original = event("key-1")
    stream.accept([(original, "fp")])
    reader = intake.IntakeReader(redis_client, "recorder-1")
    reader.acknowledge(reader.next_batch(10), [original.id])

    assert stream.redrive([original]).acceptances == [intake.Acceptance("queued", original.id)]
    assert queued_ids(redis_client) == [original.id]


def test_a_recorder_reads_its_own_unacknowledged_entries_first_and_done_removes_them(stream, redis_client):
    events = [event() for _ in range(3)]
    stream.accept([(e, "fp") for e in events])
    reader = intake.IntakeReader(redis_client, "recorder-1")

    first = reader.next_batch(2)
    assert [e.entry_id for e in reader.next_batch(2)] == [e.entry_id for e in first]  # not acknowledged yet
    reader.acknowledge(first, [events[0].id, events[1].id])

    assert [AcceptedUsageEvent.from_message(e.message).id for e in reader.next_batch(2)] == [events[2].id]
    assert stream.queued_event(events[0].id) is None and stream.queued_event(events[2].id) == events[2]
    assert intake.unread(redis_client) == 0


def test_a_recorder_going_to_sleep_goes_on_when_unread_entries_arrived_meanwhile(stream, redis_client):
    reader = intake.IntakeReader(redis_client, "recorder-1")
    reader.keep_awake()
    assert reader.go_to_sleep() is False
    assert redis_client.get(intake.RECORDER_WANTED_KEY) is None

    redis_client.set(intake.RECORDER_WANTED_KEY, 1)  # a draining recorder: the accept does not wake another
    assert stream.accept([(event(), "fp")]).wake_recorder is False
    assert reader.go_to_sleep() is True


def test_the_sweep_wakes_a_recorder_for_unread_entries_only_when_none_is_wanted(stream, redis_client):
    assert intake.recorder_needed(redis_client) is False
    stream.accept([(event(), "fp")])  # sets the flag: a recorder was woken

    assert intake.recorder_needed(redis_client) is False
    redis_client.delete(intake.RECORDER_WANTED_KEY)  # that wake-up was lost
    assert intake.recorder_needed(redis_client) is True
    assert intake.recorder_needed(redis_client) is False  # the sweep took the flag: one wake-up
