"""The hourly roll-ups (``usage_hourly``, migration 0008's triggers) follow every insert and
every move of a log row in its own transaction: ``usage_totals.totals`` (whole hours from
the roll-ups) always equals the same totals summed from the rows alone."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from shared import db, models, usage_rows, usage_totals
from shared.models import UsageStatus
from tests.support.billing import log_row, store

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
GROUPINGS = [(), ("model_name",), ("service_name", "day"), ("user_id", "source", "hour")]
WINDOWS = [
    (START, START + dt.timedelta(days=31)),  # whole hours only
    (START + dt.timedelta(minutes=30), START + dt.timedelta(days=2, minutes=10)),  # partial first and last hours
    (START + dt.timedelta(minutes=5), START + dt.timedelta(minutes=50)),  # within one hour
]


@pytest.fixture
def rows(factory, settings):
    organization = factory.organization(stripe_customer_id=None)
    users = [factory.user(), factory.user()]
    services = [factory.service("transcription"), factory.service("dictation")]
    prices = [factory.price("small-model"), factory.price("large-model")]
    made = []
    for index, status in enumerate([UsageStatus.RECORDED] * 6 + [UsageStatus.REPORTED] * 3 + [UsageStatus.FAILED] * 2):
        made.append(log_row(
            user_id=users[index % 2].id, organization_id=organization.id, service_id=services[index % 3 // 2].id,
            price=prices[index % 2], agent700_cost=f"0.{index + 1:02d}0000000001", status=status,
            occurred_at=START + dt.timedelta(minutes=7 * index + 20 * (index % 4), hours=index % 5),
            source="batch_job" if index % 4 == 0 else "external_api", stripe_first_sent_at=START,
        ))
    store(settings, *made)
    return organization, [row.id for row in made]


def assert_roll_ups_agree(settings, organization):
    with db.transaction(settings.database_url) as session:
        for since, until in WINDOWS:
            for group_by in GROUPINGS:
                rolled = usage_totals.totals(session, organization.id, since, until, group_by)
                summed = usage_totals.totals_from_rows(session, organization.id, since, until, group_by)
                assert (rolled.total, rolled.groups) == (summed.total, summed.groups), (since, until, group_by)


def test_every_move_is_followed_in_its_transaction(settings, rows):
    organization, ids = rows
    assert_roll_ups_agree(settings, organization)
    call = usage_rows.StripeCall(START, "key", "event")
    moves = [
        lambda s: usage_rows.mark_reported(s, {ids[0]: call, ids[1]: call}),
        lambda s: usage_rows.fail(s, {ids[2]: "refused"}),
        lambda s: usage_rows.fail_dropped(s, {ids[0]: "dropped"}),
        lambda s: usage_rows.flag_for_reconciliation(s),
        lambda s: usage_rows.redrive(s, failed=[ids[9], ids[2]], reported=[ids[7]]),
        lambda s: usage_rows.void(s, ids[8]),
        lambda s: usage_rows.void_dropped(s, ids[8]),
        lambda s: usage_rows.note_attempt(s, [ids[5]], "later"),  # no state changes: nothing to follow
    ]
    for move in moves:
        with db.transaction(settings.database_url) as session:
            move(session)
        assert_roll_ups_agree(settings, organization)


def test_a_move_rolled_back_leaves_the_roll_ups_as_they_were(settings, rows):
    organization, ids = rows
    with pytest.raises(RuntimeError), db.transaction(settings.database_url) as session:
        usage_rows.fail(session, {ids[3]: "refused"})
        raise RuntimeError("rolled back")
    assert_roll_ups_agree(settings, organization)
    with db.transaction(settings.database_url) as session:
        statuses = set(session.scalars(sa.select(models.usage_hourly.c.status).where(models.usage_hourly.c.events != 0)))
    assert UsageStatus.FAILED in statuses and UsageStatus.RECORDED in statuses


def test_deleting_log_rows_keeps_their_roll_ups(settings, rows):
    """Retention deletes old log rows; what billing summed of them stays."""
    organization, _ = rows
    since, until = WINDOWS[0]
    with db.transaction(settings.database_url) as session:
        before = usage_totals.totals(session, organization.id, since, until)
        session.execute(sa.delete(models.UserBillableRequestLog).where(
            models.UserBillableRequestLog.organization_id == organization.id
        ))
    with db.transaction(settings.database_url) as session:
        after = usage_totals.totals(session, organization.id, since, until)
    assert after.total == before.total and after.total.total.events == 11


def test_another_organizations_rows_are_not_counted(settings, rows, factory):
    organization, _ = rows
    with db.transaction(settings.database_url) as session:
        answer = usage_totals.totals(session, uuid.uuid4(), *WINDOWS[0])
    assert answer.total.total.events == 0 and answer.groups == []
    assert_roll_ups_agree(settings, organization)
