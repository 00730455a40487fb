"""A log row's life (``shared.usage_rows``): each move leaves only from the states it names,
sets its own columns, and no other module writes a row's state."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

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


MOVES = {
    usage_rows.REPORT: lambda session, row_id: usage_rows.mark_reported(session, [row_id]),
    usage_rows.FAIL: lambda session, row_id: usage_rows.fail(session, {row_id: "never"}),
    usage_rows.DROP: lambda session, row_id: usage_rows.fail_dropped(session, {row_id: "dropped"}),
    usage_rows.REDRIVE: lambda session, row_id: usage_rows.redrive(session, [row_id]),
    usage_rows.REDRIVE_REPORTED: lambda session, row_id: usage_rows.redrive(session, [], [row_id]),
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
    }


def test_flagging_sets_the_flag_and_a_redrive_clears_it(usage_records, factory, settings):
    organization = factory.organization()
    stale = usage_records.log(organization, status=UsageStatus.RECORDED, error=None)
    with db.transaction(settings.database_url) as session:
        session.get(models.UserBillableRequestLog, stale.id).recorded_at -= usage_rows.IDENTIFIER_WINDOW + dt.timedelta(minutes=1)

    with db.transaction(settings.database_url) as session:
        assert usage_rows.flag_for_reconciliation(session) == 1
    flagged = stored(settings, stale.id)
    assert (flagged.status, flagged.needs_reconciliation) == (UsageStatus.FAILED, True)

    with db.transaction(settings.database_url) as session:
        assert [row.id for row in usage_rows.redrive(session, [stale.id])] == [stale.id]
    redriven = stored(settings, stale.id)
    assert (redriven.status, redriven.needs_reconciliation, redriven.error) == (UsageStatus.RECORDED, False, None)


def test_a_reported_row_has_its_time_and_no_error(usage_records, factory, settings):
    row = usage_records.log(factory.organization(), status=UsageStatus.RECORDED, error="Last attempt: 429")

    with db.transaction(settings.database_url) as session:
        usage_rows.mark_reported(session, [row.id])

    reported = stored(settings, row.id)
    assert (reported.status, reported.error, reported.stripe_attempts) == (UsageStatus.REPORTED, None, row.stripe_attempts + 1)
    assert reported.stripe_reported_at is not None


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
