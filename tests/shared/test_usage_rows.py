"""A log row's life (``shared.usage_rows``): each move leaves only from the states it names,
sets its own columns, and no other module writes a row's state."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared import db, models, usage_rows
from shared.models import UsageStatus
from tests.support.billing import UsageRecords

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "ingest_api", "worker", "operator_cli")
STATE_COLUMNS = {"status", "needs_reconciliation"}


@pytest.fixture
def usage_records(factory, settings) -> UsageRecords:
    return UsageRecords(factory, settings)


def rows_in_every_state(usage_records, factory) -> dict[UsageStatus, models.UserBillableRequestLog]:
    organization = factory.organization()
    return {
        status: usage_records.log(organization, status=status, error=None if status != UsageStatus.FAILED else "why")
        for status in UsageStatus
    }


def stored(settings, row_id) -> models.UserBillableRequestLog:
    with db.transaction(settings.database_url) as session:
        row = session.get(models.UserBillableRequestLog, row_id)
        session.expunge(row)
        return row


A_CALL = usage_rows.StripeCall(
    dt.datetime(2026, 12, 7, 12, 0, 0, 250000, tzinfo=dt.UTC), "agent700-meter-batch-abc", "agent700_cost"
)

MOVES = {
    usage_rows.REPORT: lambda session, row_id: usage_rows.mark_reported(session, {row_id: A_CALL}),
    usage_rows.FAIL: lambda session, row_id: usage_rows.fail(session, {row_id: "never"}),
    usage_rows.DROP: lambda session, row_id: usage_rows.fail_dropped(session, {row_id: "dropped"}),
    usage_rows.REDRIVE: lambda session, row_id: usage_rows.redrive(session, [row_id]),
    usage_rows.REDRIVE_REPORTED: lambda session, row_id: usage_rows.redrive(session, [], [row_id]),
    usage_rows.VOID: usage_rows.void,
}


@pytest.mark.parametrize("transition", list(MOVES), ids=lambda transition: transition.name)
def test_a_move_changes_a_row_only_from_the_states_it_leaves(transition, usage_records, factory, settings):
    rows = rows_in_every_state(usage_records, factory)

    for row in rows.values():
        with db.transaction(settings.database_url) as session:
            MOVES[transition](session, row.id)

    after = {status: stored(settings, row.id).status for status, row in rows.items()}
    assert after == {status: transition.target if status in transition.source else status for status in UsageStatus}


def test_the_moves_are_the_allowed_transitions_and_nothing_else():
    assert {(source, transition.target) for transition in usage_rows.TRANSITIONS for source in transition.source} == {
        (UsageStatus.RECORDED, UsageStatus.REPORTED),
        (UsageStatus.RECORDED, UsageStatus.FAILED),
        (UsageStatus.REPORTED, UsageStatus.FAILED),
        (UsageStatus.FAILED, UsageStatus.RECORDED),
        (UsageStatus.REPORTED, UsageStatus.RECORDED),
        (UsageStatus.RECORDED, UsageStatus.VOIDED),
        (UsageStatus.REPORTED, UsageStatus.VOIDED),
        (UsageStatus.FAILED, UsageStatus.VOIDED),
        (UsageStatus.VOIDED, UsageStatus.REPORTED),  # Stripe dropped the void's negative event
    }


def first_sent(settings, row_id, ago: dt.timedelta) -> None:
    with db.transaction(settings.database_url) as session:
        session.get(models.UserBillableRequestLog, row_id).stripe_first_sent_at = dt.datetime.now(dt.UTC) - ago


LONG_AGO = usage_rows.IDENTIFIER_WINDOW + dt.timedelta(minutes=1)


def test_a_row_first_sent_longer_ago_than_stripe_deduplicates_is_flagged_and_a_redrive_clears_the_flag(
    usage_records, factory, settings
):
    organization = factory.organization()
    stale = usage_records.log(organization, status=UsageStatus.RECORDED, error=None)
    first_sent(settings, stale.id, LONG_AGO)

    with db.transaction(settings.database_url) as session:
        assert usage_rows.flag_for_reconciliation(session) == 1
    flagged = stored(settings, stale.id)
    assert (flagged.status, flagged.needs_reconciliation) == (UsageStatus.FAILED, True)

    with db.transaction(settings.database_url) as session:
        assert [row.id for row in usage_rows.redrive(session, [stale.id], reconciled=[stale.id])] == [stale.id]
    redriven = stored(settings, stale.id)
    assert (redriven.status, redriven.needs_reconciliation, redriven.error) == (UsageStatus.RECORDED, False, None)
    assert redriven.stripe_first_sent_at is None  # reconciled: Stripe lacks it, a new window starts


def test_a_row_never_sent_is_not_flagged_however_old(usage_records, factory, settings):
    never_sent = usage_records.log(factory.organization(), status=UsageStatus.RECORDED, error=None)
    with db.transaction(settings.database_url) as session:
        session.get(models.UserBillableRequestLog, never_sent.id).recorded_at -= LONG_AGO * 2

    with db.transaction(settings.database_url) as session:
        assert usage_rows.flag_for_reconciliation(session) == 0


def test_a_failed_row_first_sent_long_ago_needs_reconciliation_and_a_plain_redrive_keeps_its_first_send(
    usage_records, factory, settings
):
    organization = factory.organization()
    old, recent = (usage_records.log(organization, status=UsageStatus.FAILED, error="dropped") for _ in range(2))
    first_sent(settings, old.id, LONG_AGO)
    first_sent(settings, recent.id, dt.timedelta(hours=1))
    unreconciled = sa.select(models.UserBillableRequestLog.id).where(usage_rows.unreconciled())

    with db.transaction(settings.database_url) as session:
        assert set(session.scalars(unreconciled)) == {old.id}
        usage_rows.redrive(session, [recent.id])
    # Within the window the identifier still deduplicates: the window is not restarted.
    assert dt.datetime.now(dt.UTC) - stored(settings, recent.id).stripe_first_sent_at > dt.timedelta(minutes=59)


def test_the_first_send_is_marked_once(usage_records, factory, settings):
    row = usage_records.log(factory.organization(), status=UsageStatus.RECORDED, error=None)
    with db.transaction(settings.database_url) as session:
        usage_rows.sending(session, [row.id])
    first = stored(settings, row.id).stripe_first_sent_at

    with db.transaction(settings.database_url) as session:
        usage_rows.sending(session, [row.id])

    assert first is not None and stored(settings, row.id).stripe_first_sent_at == first


def test_a_reported_row_keeps_its_call_and_has_no_error(usage_records, factory, settings):
    row = usage_records.log(factory.organization(), status=UsageStatus.RECORDED, error="Last attempt: 429")

    with db.transaction(settings.database_url) as session:
        usage_rows.mark_reported(session, {row.id: A_CALL})

    reported = stored(settings, row.id)
    assert (reported.status, reported.error, reported.stripe_attempts) == (UsageStatus.REPORTED, None, row.stripe_attempts + 1)
    assert (reported.stripe_reported_at, reported.stripe_request_key, reported.stripe_event_name) == (
        A_CALL.started_at, A_CALL.request_key, A_CALL.event_name
    )


def _state_writes(path: Path) -> list[str]:
    """Calls in the module that write a log row's state columns (``.values(status=...)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            written = {keyword.arg for keyword in node.keywords} & STATE_COLUMNS
            if written:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} writes {sorted(written)}")
    return found


def test_no_module_but_the_row_life_module_writes_a_rows_state():
    home = ROOT / "shared" / "usage_rows.py"
    writes = [
        write
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != home
        for write in _state_writes(path)
    ]
    assert writes == []
    assert _state_writes(home)  # the check sees the writes where they are
