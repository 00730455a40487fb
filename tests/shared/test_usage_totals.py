"""Usage totals (``shared.usage_totals``): an organization's events over a window, exact,
grouped as asked, each group split by how far billing got."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from shared import db, usage_totals
from shared.models import UsageStatus
from tests.support.billing import log_row, store

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.fixture
def month(factory, settings):
    """An organization's November: rows of two models, two services, two users, every
    state; and what must not count: another organization's row, rows just outside."""
    organization, other = factory.organization(stripe_customer_id=None), factory.organization(stripe_customer_id=None)
    users = [factory.user(), factory.user()]
    transcription, dictation = factory.service("transcription"), factory.service("dictation")
    small, large = factory.price("small-model"), factory.price("large-model")

    def row(cost, status, at, *, price=small, service=transcription, user=users[0], org=organization, source="external_api"):
        return log_row(user_id=user.id, organization_id=org.id, service_id=service.id, price=price, agent700_cost=cost,
                       status=status, occurred_at=at, source=source, input_tokens=10, output_tokens=4)

    store(settings,
          row("0.000000600000", UsageStatus.REPORTED, START),  # the first instant counts
          row("0.100000000001", UsageStatus.REPORTED, START + dt.timedelta(days=3, hours=5), user=users[1]),
          row("0.200000000000", UsageStatus.RECORDED, START + dt.timedelta(days=3, hours=5, minutes=59), price=large),
          row("0.300000000000", UsageStatus.FAILED, START + dt.timedelta(days=20), service=dictation, source="batch_job"),
          row("0.400000000000", UsageStatus.VOIDED, START + dt.timedelta(days=29, hours=23), price=large),
          row("9.000000000000", UsageStatus.REPORTED, END),  # the window is half-open
          row("9.000000000000", UsageStatus.REPORTED, START - dt.timedelta(microseconds=1)),
          row("9.000000000000", UsageStatus.REPORTED, START + dt.timedelta(days=1), org=other))
    return organization, users


def totals(settings, organization, *group_by, since=START, until=END):
    with db.transaction(settings.database_url) as session:
        return usage_totals.totals(session, organization.id, since, until, group_by)


def test_the_total_is_exact_and_split_by_state(settings, month):
    organization, _ = month
    answer = totals(settings, organization)

    total = answer.total
    assert (total.total.events, total.total.input_tokens, total.total.output_tokens) == (5, 50, 20)
    assert total.total.agent700_cost == Decimal("1.000000600001")
    assert total.total.service_cost == Decimal("0.5000003000005")
    billed = total.by_state["billed"]
    assert (billed.events, billed.agent700_cost, billed.stripe_value) == (2, Decimal("0.100000600001"), 1 + 100000)
    assert [total.by_state[s].agent700_cost for s in ("pending", "failed", "voided")] == [
        Decimal("0.2"), Decimal("0.3"), Decimal("0.4"),
    ]
    assert [group.key for group in answer.groups] == [{}]
    assert answer.as_of is not None


def test_groups_by_model_and_hour_in_key_order(settings, month):
    organization, _ = month
    groups = totals(settings, organization, "model_name", "hour").groups

    keys = [(g.key["model_name"], g.key["hour"]) for g in groups]
    assert keys == [
        ("large-model", START + dt.timedelta(days=3, hours=5)),
        ("large-model", START + dt.timedelta(days=29, hours=23)),
        ("small-model", START),
        ("small-model", START + dt.timedelta(days=3, hours=5)),
        ("small-model", START + dt.timedelta(days=20)),
    ]
    assert groups[1].by_state["voided"].events == 1 and groups[1].by_state["billed"].events == 0


def test_groups_by_service_user_source_and_day(settings, month):
    organization, users = month
    by_service = {g.key["service_name"]: g.total.events for g in totals(settings, organization, "service_name").groups}
    assert by_service == {"dictation": 1, "transcription": 4}
    by_user = {g.key["user_id"]: g.total.events for g in totals(settings, organization, "user_id").groups}
    assert by_user == {users[0].id: 4, users[1].id: 1}
    by_source = {g.key["source"]: g.total.events for g in totals(settings, organization, "source").groups}
    assert by_source == {"batch_job": 1, "external_api": 4}
    days = [g.key["day"] for g in totals(settings, organization, "day").groups]
    assert days == [START, START + dt.timedelta(days=3), START + dt.timedelta(days=20), START + dt.timedelta(days=29)]


@pytest.mark.parametrize(("since", "until", "message"), [
    (END, START, "must be after"),
    (START, START, "must be after"),
    (START, START + usage_totals.MAX_SPAN + dt.timedelta(microseconds=1), "at most 31 days"),
])
def test_a_window_backwards_empty_or_too_long_is_refused(settings, month, since, until, message):
    organization, _ = month
    with pytest.raises(usage_totals.BadWindow, match=message):
        totals(settings, organization, since=since, until=until)
