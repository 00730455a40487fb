"""``usage summary``: an organization's usage over a window from the command line, the same
figures as GET /api/billing/usage (``--json`` is its very document)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from shared import usage_totals
from shared.models import UsageStatus
from tests.support.billing import log_row, store
from tests.support.operator_commands import assert_refused

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SINCE, UNTIL = "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"


@pytest.fixture
def november(world, settings):
    """Three rows of the world's November (billed, pending, voided) and one just after it."""
    def row(cost, status, at, **columns):
        return log_row(user_id=world.user.id, organization_id=world.organization.id, service_id=world.service.id,
                       price=world.price, agent700_cost=cost, status=status, occurred_at=at, **columns)

    store(settings,
          row("0.000768000000", UsageStatus.REPORTED, START),
          row("0.000000000001", UsageStatus.RECORDED, START + dt.timedelta(days=2, hours=3), source="batch_job"),
          row("0.500000000000", UsageStatus.VOIDED, START + dt.timedelta(days=2, hours=4)),
          row("9.000000000000", UsageStatus.REPORTED, START + dt.timedelta(days=30)))
    return world


def summary(runner, world, *args: str):
    return runner.invoke(args=["usage", "summary", "--org", str(world.organization.id), *args])


def test_the_json_is_the_apis_document(runner, client, november):
    result = summary(runner, november, "--since", SINCE, "--until", UNTIL, "--by", "source", "--by", "day", "--json")
    api = client.get("/api/billing/usage", headers=november.headers(), query_string=[
        ("organization_id", str(november.organization.id)), ("from", SINCE), ("to", UNTIL),
        ("group_by", "source"), ("group_by", "day"),
    ])

    assert result.exit_code == 0, result.output
    printed, answered = json.loads(result.stdout), api.get_json()
    assert printed.pop("as_of") and answered.pop("as_of")
    assert printed == answered
    assert printed["total"]["agent700_cost"] == "0.500768000001000000"
    assert printed["total"]["by_state"]["billed"]["stripe_value"] == 768
    assert [g["key"] for g in printed["groups"]] == [
        {"source": "batch_job", "day": "2026-11-03T00:00:00Z"},
        {"source": "external_api", "day": "2026-11-01T00:00:00Z"},
        {"source": "external_api", "day": "2026-11-03T00:00:00Z"},
    ]


def test_the_table_has_a_row_per_group_and_the_total(runner, november):
    result = summary(runner, november, "--since", SINCE, "--until", UNTIL, "--by", "model_name")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Usage of organization {november.organization.id} from {SINCE} to {UNTIL}")
    assert "Recorded events only" in lines[1]
    assert lines[2].split() == ["MODEL_NAME", "EVENTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "SERVICE_COST", "AGENT700_COST",
                                "STRIPE_VALUE", "BILLED", "PENDING", "FAILED", "VOIDED"]
    assert lines[3].split() == ["gpt-4o-mini", "3", "300", "150", "0.250384000000500000", "0.500768000001000000", "500768",
                                "0.000768000000000000", "0.000000000001000000", "0.000000000000000000", "0.500000000000000000"]
    assert lines[4].split()[:2] == ["TOTAL", "3"]


def test_without_by_the_table_is_the_total_alone(runner, november):
    result = summary(runner, november, "--since", SINCE, "--until", UNTIL)

    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()[2:-1]
    assert len(table) == 2 and table[1].split()[0] == "3", table


def test_until_defaults_to_now(runner, world, settings):
    now = dt.datetime.now(dt.UTC)
    store(settings, log_row(user_id=world.user.id, organization_id=world.organization.id, service_id=world.service.id,
                            price=world.price, occurred_at=now - dt.timedelta(minutes=1)))
    since = (now - dt.timedelta(days=1)).isoformat()

    document = json.loads(summary(runner, world, "--since", since, "--json").stdout)

    assert document["total"]["events"] == 1
    assert now <= dt.datetime.fromisoformat(document["to"]) <= dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--since", UNTIL, "--until", SINCE], "must be after"),
    (["--since", SINCE, "--until", "2026-12-02T00:00:01Z"], f"at most {usage_totals.MAX_SPAN.days} days"),
    (["--since", "2026-11-01"], "RFC 3339"),
    (["--since", SINCE, "--until", UNTIL, "--by", "day", "--by", "day"], "once"),
    (["--since", SINCE, "--until", UNTIL, "--by", "model_name,day"], "--by"),
    (["--since", "0001-01-01T00:00:00+01:00", "--until", UNTIL], "years 1 and 9999"),
])
def test_a_bad_window_or_grouping_is_a_usage_error(runner, world, args, fragment):
    assert_refused(summary(runner, world, *args), fragment, exit_code=2)


def test_an_unknown_organization_is_refused(runner, world):
    result = runner.invoke(args=["usage", "summary", "--org", str(uuid.uuid4()), "--since", SINCE, "--until", UNTIL])

    assert_refused(result, "No organization", exit_code=1)
