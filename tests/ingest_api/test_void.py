"""POST /api/billing/external-usage/{id}/void: the contract's answers (Stripe's side of a
void is tested through the reporter, tests/worker/test_voiding.py)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from shared import db, models
from shared.intake import Intake
from tests.support.api_caller import URL, record_as_worker


def void(billing, event_id, body=None):
    return billing.client.post(f"{URL}/{event_id}/void", json={"reason": "sent twice"} if body is None else body,
                               headers=billing.headers())


def voids(settings) -> list[models.UsageVoid]:
    with db.transaction(settings.database_url) as session:
        return list(session.scalars(sa.select(models.UsageVoid)))


def recorded(billing, settings, **columns):
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, **columns)
    return event


def test_a_row_never_sent_is_voided_at_once_and_a_second_void_answers_the_same(billing, settings):
    event = recorded(billing, settings)

    first = void(billing, event.id)
    again = void(billing, event.id, {"reason": "once more"})

    assert first.status_code == again.status_code == 200
    record = first.get_json()
    assert record["status"] == "voided"
    assert record["void"]["method"] == "never_sent" and record["void"]["completed_at"] is not None
    assert record["void"]["reason"] == "sent twice"
    assert record["void"]["requested_by"] == str(billing.caller.id)  # the caller, not the usage's user
    assert again.get_json() == record
    assert billing.get(event.id).get_json() == record


def test_a_reported_row_first_sent_an_hour_ago_is_cancelled_by_the_reporter(billing, settings):
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    event = recorded(billing, settings, status="reported", stripe_value=768, stripe_reported_at=an_hour_ago,
                     stripe_first_sent_at=an_hour_ago)

    answer = void(billing, event.id)

    assert answer.status_code == 202
    record = answer.get_json()
    assert record["status"] == "reported"
    assert (record["void"]["method"], record["void"]["completed_at"]) == ("stripe_cancel", None)


def test_a_row_flagged_for_reconciliation_is_refused_with_the_reason(billing, settings):
    event = recorded(billing, settings, status="failed", needs_reconciliation=True,
                     stripe_first_sent_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))

    answer = void(billing, event.id)

    assert answer.status_code == 409 and "stripe reconcile" in answer.get_json()["error"]
    assert voids(settings) == []


def test_a_queued_event_is_refused_for_now(billing, settings):
    assert billing.post().status_code == 202
    (event,) = billing.queued()

    answer = void(billing, event.id)

    assert answer.status_code == 409 and answer.headers["Retry-After"]
    assert voids(settings) == []


def test_an_unknown_event_is_404(billing, settings):
    assert void(billing, uuid.uuid4()).status_code == 404


@pytest.mark.parametrize(
    "body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}, {"reason": "a\x00b"},
             {"reason": "ok", "extra": 1}, {"reason": 5}],
    ids=["missing", "empty", "spaces", "too-long", "nul", "extra-field", "not-a-string"],
)
def test_a_void_without_a_valid_reason_is_422_and_writes_nothing(billing, settings, body):
    event = recorded(billing, settings)

    answer = void(billing, event.id, body)

    assert answer.status_code == 422 and answer.get_json()["details"]
    assert voids(settings) == []


def test_an_event_recorded_while_the_void_looks_is_voided_not_404(billing, settings, monkeypatch):
    # The race the soak found: the void finds no row, then the recorder commits the row and
    # deletes the queued copy, then the void finds nothing queued either.
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    queued_event = Intake.queued_event

    def recorded_meanwhile(self, event_id):
        if event_id == event.id and not voids(settings):
            record_as_worker(settings, billing, event)
        return queued_event(self, event_id)

    monkeypatch.setattr(Intake, "queued_event", recorded_meanwhile)

    answer = void(billing, event.id)

    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["void"]["method"] == "never_sent"


def test_a_recorded_event_whose_queued_copy_is_still_there_is_answered_from_its_row(billing, settings, monkeypatch):
    # The soak's redis_kill_9: the recorder committed the row, its deletion of the queued
    # copy failed; the void completed, and its 200 answered "queued" without the void.
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    record_as_worker(settings, billing, event)
    original = Intake.queued_event
    monkeypatch.setattr(Intake, "queued_event", lambda self, event_id: event if event_id == event.id else original(self, event_id))

    answer = void(billing, event.id)

    assert answer.status_code == 200
    assert answer.get_json()["status"] == "voided" and answer.get_json()["void"]["method"] == "never_sent"
    assert billing.get(event.id).get_json() == answer.get_json()
