"""``stripe reconcile``: the database's reported total against the local Stripe server's
meter event summaries, sent there by the worker's own reporting code (the real SDK)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from shared import models
from shared.reconciliation import RECONCILE_ERROR
from tests.test_cli_usage import Billing
from worker.stripe_reporting import MeterEvent, Outcome, StripeMeter

TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAY = dt.timedelta(days=1)


def rfc3339(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@pytest.fixture
def billing(factory, settings) -> Billing:
    return Billing(factory, settings)


@pytest.fixture
def meter(settings, stripe) -> StripeMeter:
    return StripeMeter(settings, api="v1")


def send(meter: StripeMeter, organization, *rows) -> None:
    """Report the rows to the local Stripe server as the worker does."""
    outcomes = meter.report(
        [MeterEvent(row.id, organization.stripe_customer_id, row.stripe_value, row.occurred_at) for row in rows]
    )
    assert {result.outcome for result in outcomes.values()} == {Outcome.REPORTED}, outcomes


def reported(billing, organization, occurred_at: dt.datetime, cost: str = "0.001234"):
    return billing.log(
        organization, status=models.UsageStatus.REPORTED, error=None, agent700_cost=cost, occurred_at=occurred_at
    )


def reconcile(runner, organization_id, *extra: str):
    return runner.invoke(args=["stripe", "reconcile", "--org", str(organization_id), *extra])


def assert_error(result, *fragments: str) -> None:
    """Exit 2 (1 means "different"), one ``Error:`` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_match_when_every_reported_row_is_at_stripe(runner, factory, billing, meter):
    organization = factory.organization(stripe_customer_id="cus_match")
    rows = [
        reported(billing, organization, TODAY - 2 * DAY + dt.timedelta(hours=15, minutes=30), "0.001234"),
        reported(billing, organization, TODAY - DAY + dt.timedelta(hours=10, microseconds=999_999), "0.5"),
        reported(billing, organization, TODAY - DAY + dt.timedelta(hours=23, minutes=59, seconds=59), "0.000001"),
    ]
    send(meter, organization, *rows)
    # Not reported yet: counted, not compared.
    billing.log(organization, status=models.UsageStatus.RECORDED, error=None, occurred_at=TODAY - DAY)
    billing.log(organization, occurred_at=TODAY - DAY)
    billing.log(organization, error=RECONCILE_ERROR, occurred_at=TODAY - DAY)
    # Another organization's usage is not this one's.
    other = factory.organization(stripe_customer_id="cus_other")
    send(meter, other, reported(billing, other, TODAY - DAY + dt.timedelta(hours=1)))

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 3 * DAY))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "MATCH"
    assert "Database total (reported): 501235 (0.501235 USD)" in lines
    assert "Stripe total:              501235 (0.501235 USD)" in lines
    assert "Difference (database - Stripe): 0" in lines
    assert "1 row(s) still recorded (not yet reported), 2 failed (1 of them flagged for reconciliation)" in result.stdout
    assert "Days that differ" not in result.stdout


def test_match_through_the_v2_meter_event_stream(runner, factory, billing, settings, stripe):
    organization = factory.organization(stripe_customer_id="cus_stream")
    rows = [reported(billing, organization, TODAY - DAY + dt.timedelta(hours=h, microseconds=123_456)) for h in (1, 2)]
    send(StripeMeter(settings, api="v2"), organization, *rows)

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 2468 " in result.stdout


def test_a_row_missing_at_stripe_is_different_and_its_day_is_listed(runner, factory, billing, meter):
    organization = factory.organization(stripe_customer_id="cus_missing")
    two_days_ago = TODAY - 2 * DAY + dt.timedelta(hours=9)
    yesterday = TODAY - DAY + dt.timedelta(hours=9)
    send(meter, organization, reported(billing, organization, two_days_ago), reported(billing, organization, yesterday))
    reported(billing, organization, yesterday + dt.timedelta(hours=1), "0.000100")  # never reached Stripe

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 3 * DAY))

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "DIFFERENT by 100"
    assert "Difference (database - Stripe): 100" in lines
    day_rows = lines[lines.index("Days that differ (UTC):") + 2 : -1]
    assert [line.split() for line in day_rows] == [[str(yesterday.date()), "1334", "1234", "100"]]


def test_an_event_at_stripe_that_the_database_does_not_count_as_reported(runner, factory, billing, meter):
    """The lost-answer case: Stripe took it, the row was flagged for reconciliation."""
    organization = factory.organization(stripe_customer_id="cus_lost_answer")
    send(meter, organization, reported(billing, organization, TODAY - DAY + dt.timedelta(hours=3)))
    flagged = billing.log(organization, error=RECONCILE_ERROR, agent700_cost="0.000007", occurred_at=TODAY - DAY)
    send(meter, organization, flagged)

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == "DIFFERENT by -7"
    assert re.search(rf"^{TODAY.date() - DAY}\s+1234\s+1241\s+-7$", result.stdout, re.MULTILINE), result.stdout
    assert "1 failed (1 of them flagged for reconciliation)" in result.stdout


def test_only_the_window_is_compared_on_partial_days(runner, factory, billing, meter):
    organization = factory.organization(stripe_customer_id="cus_window")
    since = TODAY - 2 * DAY + dt.timedelta(hours=12)
    until = TODAY - DAY + dt.timedelta(hours=6, minutes=30)
    inside = [reported(billing, organization, since), reported(billing, organization, until - dt.timedelta(seconds=1))]
    send(meter, organization, *inside)
    # Outside [since, until) on the same days: at Stripe only (would differ if compared)...
    outside_at_stripe = billing.log(organization, agent700_cost="1", occurred_at=since - dt.timedelta(minutes=1))
    send(meter, organization, outside_at_stripe)
    # ...and in the database only.
    reported(billing, organization, until, "2")

    result = reconcile(runner, organization.id, "--since", rfc3339(since), "--until", rfc3339(until))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 2468 " in result.stdout

    wider = reconcile(runner, organization.id, "--since", rfc3339(since - dt.timedelta(hours=1)), "--until", rfc3339(until))

    assert wider.exit_code == 1, wider.output
    assert wider.stdout.splitlines()[-1] == "DIFFERENT by -1000000"


def test_an_organization_with_nothing_anywhere_matches(runner, factory, billing, meter):
    organization = factory.organization(stripe_customer_id="cus_quiet")
    other = factory.organization(stripe_customer_id="cus_busy")
    send(meter, other, reported(billing, other, TODAY - DAY))  # the meter exists

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 7 * DAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 0 " in result.stdout


# --- errors ------------------------------------------------------------------------------


def test_unknown_organization(runner, stripe):
    unknown = uuid.uuid4()

    assert_error(reconcile(runner, unknown, "--since", rfc3339(TODAY - DAY)), f"No organization with id {unknown}")


def test_organization_without_stripe_customer_id(runner, factory, stripe):
    organization = factory.organization(stripe_customer_id=None)

    assert_error(reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)), "has no Stripe customer id")


def test_no_meter_for_the_event_name(runner, factory, stripe):
    organization = factory.organization(stripe_customer_id="cus_no_meter")

    assert_error(
        reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)),
        "no billing meter for event name 'agent700_cost'",
    )


def test_stripe_failing(runner, factory, billing, meter, stripe):
    organization = factory.organization(stripe_customer_id="cus_down")
    send(meter, organization, reported(billing, organization, TODAY - DAY))
    stripe.set_faults(fail_next=10, status=500)

    assert_error(reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)), "Stripe refused the request (500)")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--since", "yesterday"], "not an RFC 3339 time"),
        (["--since", "2025-01-01T00:00:00"], "not an RFC 3339 time"),
        (["--since", rfc3339(TODAY - DAY + dt.timedelta(seconds=30))], "not on a minute boundary"),
        (["--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY - DAY)], "must be after --since"),
        (["--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY - 2 * DAY)], "must be after --since"),
        ([], "Missing option '--since'"),
    ],
)
def test_bad_times(runner, factory, stripe, args, fragment):
    organization = factory.organization()

    assert_error(reconcile(runner, organization.id, *args), fragment)
