"""``usage void`` / ``usage voids`` / ``usage credit-issued`` / ``usage void-settled``: voids from the command line."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import sqlalchemy as sa

from shared import db, models
from tests.support.billing import log_rows
from tests.support.operator_commands import assert_refused
from tests.worker.test_reporting import record

_logs = models.UserBillableRequestLog


def test_usage_void_of_a_row_never_sent_completes_it_and_voids_lists_it(runner, settings, world):
    event = world.event()
    record(settings, [event])

    result = runner.invoke(args=["usage", "void", "--id", str(event.id), "--reason", "test call against production"])

    assert result.exit_code == 0, result.output
    assert "never_sent, complete" in result.output and result.output.splitlines()[-1] == str(event.id)
    assert [row.status for row in log_rows(settings)] == ["voided"]
    listed = json.loads(runner.invoke(args=["usage", "voids", "--json"]).output)["voids"]
    assert [(v["event_id"], v["method"], v["state"], v["reason"]) for v in listed] == [
        (str(event.id), "never_sent", "completed", "test call against production")
    ]
    assert listed[0]["requested_by"].startswith("operator:")


def test_usage_void_refuses_an_unknown_event_and_an_empty_reason(runner, settings, world):
    assert_refused(runner.invoke(args=["usage", "void", "--id", str(uuid.uuid4()), "--reason", "x"]), "No recorded event")
    event = world.event()
    record(settings, [event])
    assert_refused(runner.invoke(args=["usage", "void", "--id", str(event.id), "--reason", "  "]), "--reason", exit_code=2)
    assert [row.status for row in log_rows(settings)] == ["recorded"]


def test_a_manual_credit_is_listed_with_its_amount_until_finance_issues_it(runner, settings, world):
    event = world.event()
    record(settings, [event])
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).values(
            status="reported", occurred_at=sa.func.now() - dt.timedelta(days=40),
            stripe_first_sent_at=sa.func.now() - dt.timedelta(days=40), stripe_reported_at=sa.func.now(),
        ))
    (row,) = log_rows(settings)

    assert runner.invoke(args=["usage", "void", "--id", str(event.id), "--reason", "wrong org"]).exit_code == 0
    owed = json.loads(runner.invoke(args=["usage", "voids", "--needs-credit", "--json"]).output)

    assert [(v["event_id"], v["method"], v["agent700_cost"]) for v in owed["voids"]] == [
        (str(event.id), "manual_credit", format(row.agent700_cost, "f"))
    ]
    assert owed["total_agent700_cost"] == format(row.agent700_cost, "f")
    done = runner.invoke(args=["usage", "credit-issued", "--id", str(event.id), "--note", "CN-2026-0042"])
    assert done.exit_code == 0, done.output
    assert json.loads(runner.invoke(args=["usage", "voids", "--needs-credit", "--json"]).output)["voids"] == []
    assert [r.status for r in log_rows(settings)] == ["voided"]


def test_a_void_refused_for_reconciliation_is_settled_with_what_reconcile_showed(runner, settings, world):
    event = world.event()
    record(settings, [event])
    with db.transaction(settings.database_url) as session:
        session.execute(sa.update(_logs).values(
            status="failed", needs_reconciliation=True, stripe_first_sent_at=sa.func.now() - dt.timedelta(hours=30),
        ))
    assert_refused(runner.invoke(args=["usage", "void", "--id", str(event.id), "--reason", "wrong org"]), "usage void-settled")
    settle = ["usage", "void-settled", "--id", str(event.id), "--stripe-bills", "nothing", "--note", "reconcile: missing at Stripe"]
    assert_refused(runner.invoke(args=settle), "give the reason")

    result = runner.invoke(args=[*settle, "--reason", "wrong org"])

    assert result.exit_code == 0, result.output
    assert "never_sent, complete" in result.output and result.output.splitlines()[-1] == str(event.id)
    assert [row.status for row in log_rows(settings)] == ["voided"]
    (listed,) = json.loads(runner.invoke(args=["usage", "voids", "--json"]).output)["voids"]
    assert (listed["reason"], listed["settled_note"]) == ("wrong org", "reconcile: missing at Stripe")
    assert listed["settled_by"].startswith("operator:") and listed["state"] == "completed"
