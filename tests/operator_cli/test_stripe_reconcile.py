"""``stripe reconcile``: the database's reported total against the local Stripe server's
meter event summaries, sent there by the worker's own reporting code (the real SDK)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest

from shared import db, models, usage_voids
from shared.operator_messages import RECONCILE_FIRST
from shared.stripe_meter import MeterEvent
from tests.support.operator_commands import assert_refused
from tests.support.stripe_sdk import settle
from tests.worker.test_reporting import record, report
from worker import reporting
from worker.stripe_reporting import Outcome, StripeMeter

TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAY = dt.timedelta(days=1)


def rfc3339(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")




class SettledMeter(StripeMeter):
    """The worker's reporter, whose events Stripe has summarized by the time each test
    reconciles: summaries are eventually consistent, and an operator reconciles a window
    once it has settled (the local server's clock is moved past its summary lag)."""

    def __init__(self, settings, server, api: str = "v1"):
        super().__init__(settings, api=api)
        self._server = server

    def report(self, events):
        results = super().report(events)
        settle(self._server)
        return results


@pytest.fixture
def meter(settings, stripe) -> StripeMeter:
    return SettledMeter(settings, stripe)


def send(meter: StripeMeter, organization, *rows) -> None:
    """Report the rows to the local Stripe server as the worker does."""
    outcomes = meter.report(
        [MeterEvent(row.id, organization.stripe_customer_id, row.stripe_value, row.occurred_at) for row in rows]
    )
    assert {result.outcome for result in outcomes.values()} == {Outcome.REPORTED}, outcomes


def reported(usage_records, organization, occurred_at: dt.datetime, cost: str = "0.001234"):
    return usage_records.log(
        organization, status=models.UsageStatus.REPORTED, error=None, agent700_cost=cost, occurred_at=occurred_at
    )


def reconcile(runner, organization_id, *extra: str):
    return runner.invoke(args=["stripe", "reconcile", "--org", str(organization_id), *extra])


def assert_reconcile_refused(result, *fragments: str) -> None:
    """Exit 2 (1 means "different"), one ``Error:`` line on stderr, no traceback."""
    assert_refused(result, *fragments, exit_code=2)


def test_match_when_every_reported_row_is_at_stripe(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_match")
    rows = [
        reported(usage_records, organization, TODAY - 2 * DAY + dt.timedelta(hours=15, minutes=30), "0.001234"),
        reported(usage_records, organization, TODAY - DAY + dt.timedelta(hours=10, microseconds=999_999), "0.5"),
        reported(usage_records, organization, TODAY - DAY + dt.timedelta(hours=23, minutes=59, seconds=59), "0.000001"),
    ]
    send(meter, organization, *rows)
    # Not reported yet: counted, not compared.
    usage_records.log(organization, status=models.UsageStatus.RECORDED, error=None, occurred_at=TODAY - DAY)
    usage_records.log(organization, occurred_at=TODAY - DAY)
    usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True, occurred_at=TODAY - DAY)
    # Another organization's usage is not this one's.
    other = factory.organization(stripe_customer_id="cus_other")
    send(meter, other, reported(usage_records, other, TODAY - DAY + dt.timedelta(hours=1)))

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 3 * DAY))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "MATCH"
    assert "Database total (reported): 501235 (0.501235 USD)" in lines
    assert "Stripe total:              501235 (0.501235 USD)" in lines
    assert "Difference (database - Stripe): 0" in lines
    assert "1 row(s) still recorded (not yet reported), 2 failed (1 of them flagged for reconciliation)" in result.stdout
    assert "Days that differ" not in result.stdout


def test_match_through_the_v2_meter_event_stream(runner, factory, usage_records, settings, stripe):
    organization = factory.organization(stripe_customer_id="cus_stream")
    rows = [reported(usage_records, organization, TODAY - DAY + dt.timedelta(hours=h, microseconds=123_456)) for h in (1, 2)]
    send(SettledMeter(settings, stripe, api="v2"), organization, *rows)

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 2468 " in result.stdout


def test_a_row_missing_at_stripe_is_different_and_its_day_is_listed(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_missing")
    two_days_ago = TODAY - 2 * DAY + dt.timedelta(hours=9)
    yesterday = TODAY - DAY + dt.timedelta(hours=9)
    send(meter, organization, reported(usage_records, organization, two_days_ago), reported(usage_records, organization, yesterday))
    reported(usage_records, organization, yesterday + dt.timedelta(hours=1), "0.000100")  # never reached Stripe

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 3 * DAY))

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "DIFFERENT by 100"
    assert "Difference (database - Stripe): 100" in lines
    day_rows = lines[lines.index("Days that differ (UTC):") + 2 : lines.index("Hours that differ (UTC):")]
    assert [line.split() for line in day_rows] == [[str(yesterday.date()), "1334", "1234", "100"]]


def test_an_event_at_stripe_that_the_database_does_not_count_as_reported(runner, factory, usage_records, meter):
    """The lost-answer case: Stripe took it, the row was flagged for reconciliation."""
    organization = factory.organization(stripe_customer_id="cus_lost_answer")
    send(meter, organization, reported(usage_records, organization, TODAY - DAY + dt.timedelta(hours=3)))
    flagged = usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True, agent700_cost="0.000007", occurred_at=TODAY - DAY)
    send(meter, organization, flagged)

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == "DIFFERENT by -7"
    assert re.search(rf"^{TODAY.date() - DAY}\s+1234\s+1241\s+-7$", result.stdout, re.MULTILINE), result.stdout
    assert "1 failed (1 of them flagged for reconciliation)" in result.stdout


def test_only_the_window_is_compared_on_partial_days(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_window")
    since = TODAY - 2 * DAY + dt.timedelta(hours=12)
    until = TODAY - DAY + dt.timedelta(hours=6, minutes=30)
    inside = [reported(usage_records, organization, since), reported(usage_records, organization, until - dt.timedelta(seconds=1))]
    send(meter, organization, *inside)
    # Outside [since, until) on the same days: at Stripe only (would differ if compared)...
    outside_at_stripe = usage_records.log(organization, agent700_cost="1", occurred_at=since - dt.timedelta(minutes=1))
    send(meter, organization, outside_at_stripe)
    # ...and in the database only.
    reported(usage_records, organization, until, "2")

    result = reconcile(runner, organization.id, "--since", rfc3339(since), "--until", rfc3339(until))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 2468 " in result.stdout

    wider = reconcile(runner, organization.id, "--since", rfc3339(since - dt.timedelta(hours=1)), "--until", rfc3339(until))

    assert wider.exit_code == 1, wider.output
    assert wider.stdout.splitlines()[-1] == "DIFFERENT by -1000000"


def test_an_organization_with_nothing_anywhere_matches(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_quiet")
    other = factory.organization(stripe_customer_id="cus_busy")
    send(meter, other, reported(usage_records, other, TODAY - DAY))  # the meter exists

    result = reconcile(runner, organization.id, "--since", rfc3339(TODAY - 7 * DAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 0 " in result.stdout


# --- errors ------------------------------------------------------------------------------


def test_unknown_organization(runner, stripe):
    unknown = uuid.uuid4()

    assert_reconcile_refused(reconcile(runner, unknown, "--since", rfc3339(TODAY - DAY)), f"No organization with id {unknown}")


def test_organization_without_stripe_customer_id(runner, factory, stripe):
    organization = factory.organization(stripe_customer_id=None)

    assert_reconcile_refused(reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)), "has no Stripe customer id")


def test_no_meter_for_the_event_name(runner, factory, stripe):
    stripe.reset()  # a Stripe account where nobody created the meter
    organization = factory.organization(stripe_customer_id="cus_no_meter")

    assert_reconcile_refused(
        reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)),
        "no billing meter for event name 'agent700_cost'",
    )


def test_stripe_failing(runner, factory, usage_records, meter, stripe):
    organization = factory.organization(stripe_customer_id="cus_down")
    send(meter, organization, reported(usage_records, organization, TODAY - DAY))
    stripe.set_faults(fail_next=10, status=500)

    assert_reconcile_refused(reconcile(runner, organization.id, "--since", rfc3339(TODAY - DAY)), "Stripe refused the request (500)")


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

    assert_reconcile_refused(reconcile(runner, organization.id, *args), fragment)


# --- which rows differ -------------------------------------------------------------------

YESTERDAY = TODAY - DAY


def table(stdout: str, title: str) -> list[list[str]]:
    """The rows (split into cells) of the table under the line starting with ``title``."""
    lines = stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(title)) + 2
    rows = []
    for line in lines[start:]:
        if not re.match(r"[0-9a-f]", line):
            break
        rows.append(line.split())
    return rows


def at_stripe_only(meter: StripeMeter, organization, occurred_at: dt.datetime, value: int) -> None:
    """A meter event the database has no row for."""
    outcomes = meter.report([MeterEvent(uuid.uuid4(), organization.stripe_customer_id, value, occurred_at)])
    assert {result.outcome for result in outcomes.values()} == {Outcome.REPORTED}, outcomes


def test_a_row_missing_at_stripe_is_named_with_the_command_to_send_it_again(runner, factory, usage_records, meter, settings):
    organization = factory.organization(stripe_customer_id="cus_named")
    send(meter, organization, reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=10)))
    missing = reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=14, minutes=30, seconds=20), "0.000100")
    since = ["--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY)]

    result = reconcile(runner, organization.id, *since)

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == "DIFFERENT by 100"
    hour, minute = rfc3339(YESTERDAY + dt.timedelta(hours=14)), rfc3339(YESTERDAY + dt.timedelta(hours=14, minutes=30))
    assert table(result.stdout, "Hours that differ") == [[hour, "100", "0", "100"]]
    assert table(result.stdout, "Minutes that differ") == [
        [minute, "100", "0", "100", "missing", "at", "Stripe:", "1", "row(s)"]
    ]
    assert table(result.stdout, "Missing at Stripe") == [[str(missing.id), rfc3339(missing.occurred_at), "100"]]
    command = f"flask --app ingest_api usage retry --id {missing.id} --force"
    assert f"    {command}" in result.stdout.splitlines()
    assert "Candidates" not in result.stdout and "Stripe counts more" not in result.stdout

    # What the operator does next: the printed command, then the reporter sends it again.
    assert runner.invoke(args=command.split()[3:]).exit_code == 0
    with db.transaction(settings.database_url) as session:
        assert session.get(models.UserBillableRequestLog, missing.id).status == models.UsageStatus.RECORDED
        send(meter, organization, missing)
        session.get(models.UserBillableRequestLog, missing.id).status = models.UsageStatus.REPORTED

    again = reconcile(runner, organization.id, *since)

    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[-1] == "MATCH"


def test_of_two_rows_in_one_minute_the_missing_one_is_named(runner, factory, usage_records, meter):
    """Also inside partial hours: the window starts and ends mid-hour."""
    organization = factory.organization(stripe_customer_id="cus_two_rows")
    minute = YESTERDAY + dt.timedelta(hours=11, minutes=40)
    at_stripe = reported(usage_records, organization, minute + dt.timedelta(seconds=10), "0.000100")
    missing = reported(usage_records, organization, minute + dt.timedelta(seconds=40, microseconds=5), "0.000250")
    send(meter, organization, at_stripe)
    window = ["--since", rfc3339(YESTERDAY + dt.timedelta(hours=9, minutes=30)),
              "--until", rfc3339(YESTERDAY + dt.timedelta(hours=11, minutes=45))]

    result = reconcile(runner, organization.id, *window)

    assert result.exit_code == 1, result.output
    assert table(result.stdout, "Hours that differ") == [
        [rfc3339(YESTERDAY + dt.timedelta(hours=11)), "350", "100", "250"]
    ]
    assert table(result.stdout, "Minutes that differ")[0][:5] == [rfc3339(minute), "350", "100", "250", "missing"]
    assert table(result.stdout, "Missing at Stripe") == [[str(missing.id), rfc3339(missing.occurred_at), "250"]]
    assert f"usage retry --id {missing.id} --force" in result.stdout
    assert str(at_stripe.id) not in result.stdout


def test_when_totals_cannot_tell_which_rows_are_missing_they_are_candidates(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_candidates")
    minute = YESTERDAY + dt.timedelta(hours=7, minutes=5)
    rows = [
        reported(usage_records, organization, minute + dt.timedelta(seconds=seconds), cost)
        for seconds, cost in ((1, "0.000100"), (2, "0.000200"), (3, "0.000400"))
    ]
    send(meter, organization, rows[0])  # Stripe lacks 600: rows 2 and 3, but no single row is 600

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    minutes = table(result.stdout, "Minutes that differ")
    assert minutes[0][:6] == [rfc3339(minute), "700", "100", "600", "candidates:", "3"]
    assert table(result.stdout, "Candidates") == [
        [str(row.id), rfc3339(row.occurred_at), value, "600"] for row, value in zip(rows, ("100", "200", "400"), strict=True)
    ]
    assert "Missing at Stripe" not in result.stdout
    assert "--force" in result.stdout and "usage retry --id ID --force" in result.stdout
    assert not any(f"--id {row.id}" in result.stdout for row in rows)


def test_events_at_stripe_the_database_does_not_have_are_shown_as_their_minutes(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_extra")
    busy_minute = YESTERDAY + dt.timedelta(hours=8)
    send(meter, organization, reported(usage_records, organization, busy_minute + dt.timedelta(seconds=3)))
    at_stripe_only(meter, organization, busy_minute + dt.timedelta(seconds=30), 5)  # a minute with a row
    at_stripe_only(meter, organization, YESTERDAY + dt.timedelta(hours=8, minutes=37, seconds=59), 7)  # one without
    at_stripe_only(meter, organization, YESTERDAY + dt.timedelta(hours=21, minutes=2), 11)  # another hour

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == "DIFFERENT by -23"
    more = [
        [rfc3339(busy_minute), "5", "-"],
        [rfc3339(YESTERDAY + dt.timedelta(hours=8, minutes=37)), "7", "-"],
        [rfc3339(YESTERDAY + dt.timedelta(hours=21, minutes=2)), "11", "-"],
    ]
    assert table(result.stdout, "Stripe counts more in these minutes") == more
    assert "Stripe has no API to list meter events" in result.stdout
    assert [row[:4] for row in table(result.stdout, "Minutes that differ")] == [
        [more[0][0], "1234", "1239", "-5"], [more[1][0], "0", "7", "-7"], [more[2][0], "0", "11", "-11"]
    ]
    assert "Missing at Stripe" not in result.stdout and "--force" not in result.stdout


def test_a_failed_row_stripe_took_is_shown_where_stripe_counts_more(runner, factory, usage_records, meter):
    """The lost-answer case again, followed down to its minute: the row is named there."""
    organization = factory.organization(stripe_customer_id="cus_lost_answer_minute")
    flagged = usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True, agent700_cost="0.000007",
                          occurred_at=YESTERDAY + dt.timedelta(hours=5, minutes=9, seconds=1))
    send(meter, organization, flagged)

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert table(result.stdout, "Stripe counts more in these minutes") == [
        [rfc3339(YESTERDAY + dt.timedelta(hours=5, minutes=9)), "7", str(flagged.id), "(failed,", "7)"]
    ]
    assert "do not retry it" in result.stdout


def test_the_window_compared_is_stated(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_window_statement")
    send(meter, organization, reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=1)))
    since, until = YESTERDAY, YESTERDAY + dt.timedelta(hours=12, minutes=30)

    given = reconcile(runner, organization.id, "--since", rfc3339(since), "--until", rfc3339(until))

    assert given.exit_code == 0, given.output
    assert (
        f"Window compared: occurred_at from {rfc3339(since)} (inclusive) to {rfc3339(until)} (exclusive); "
        "meter unit = USD x 10^6"
    ) in given.stdout.splitlines()
    assert "--until was not given" not in given.stdout

    defaulted = reconcile(runner, organization.id, "--since", rfc3339(since))

    assert defaulted.exit_code == 0, defaulted.output
    assert re.search(
        r"^--until was not given: it is the start of the current minute, \S+Z; no row of this organization occurred "
        r"after it\.$",
        defaulted.stdout,
        re.MULTILINE,
    ), defaulted.stdout


def test_the_default_until_says_how_many_newer_rows_it_left_out(runner, factory, usage_records, meter):
    organization = factory.organization(stripe_customer_id="cus_newest")
    send(meter, organization, reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=1)))
    # After the start of the current minute whenever the command runs: left out.
    newest = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    reported(usage_records, organization, newest)
    usage_records.log(organization, status=models.UsageStatus.RECORDED, error=None, occurred_at=newest)

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    window = next(line for line in result.stdout.splitlines() if line.startswith("Window compared:"))
    until = re.search(r"to (\S+) \(exclusive\)", window).group(1)
    assert (
        f"--until was not given: it is the start of the current minute, {until}; 2 row(s) of this organization "
        "occurred at or after it and are left out"
    ) in result.stdout


def test_the_drill_down_stops_at_its_request_budget_and_says_so(runner, factory, usage_records, meter, monkeypatch):
    from operator_cli import stripe_reconcile

    monkeypatch.setattr(stripe_reconcile, "MAX_DRILL_DOWN_REQUESTS", 1)
    organization = factory.organization(stripe_customer_id="cus_budget")
    send(meter, organization, reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=1)))
    reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=3))

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == "DIFFERENT by 1234"
    assert "Hours that differ" in result.stdout  # one request: the hours of the day
    assert "Minutes that differ" not in result.stdout
    assert "Stopped looking after 1 more Stripe requests; give a narrower --since/--until" in result.stdout


# --- voids ---------------------------------------------------------------------------------


def voided(settings, row, method: str, state: str = "completed") -> None:
    """The row's void as the reporter leaves it (its Stripe side done when completed)."""
    with db.transaction(settings.database_url) as session:
        session.add(models.UsageVoid(
            row_id=row.id, reason="sent twice", requested_by="user-1", method=method, state=state,
            completed_at=dt.datetime.now(dt.UTC) if state == "completed" else None,
        ))
        if state == "completed":
            session.get(models.UserBillableRequestLog, row.id).status = models.UsageStatus.VOIDED


def test_voids_are_counted_as_stripe_has_them(runner, factory, usage_records, meter, settings, stripe):
    """What Stripe should have: the reported rows, less the cancelled, with negative events
    netting their rows out; a manual credit's row stays billed at Stripe."""
    organization = factory.organization(stripe_customer_id="cus_voids")
    kept, cancelled, negated, credited = (
        reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=h, seconds=5), cost)
        for h, cost in ((1, "0.000100"), (2, "0.000200"), (3, "0.000400"), (4, "0.000800"))
    )
    send(meter, organization, kept, cancelled, negated, credited)
    assert meter.cancel(cancelled.id, settings.stripe_meter_event_name, str(cancelled.id), "k-cancel").outcome is Outcome.REPORTED
    negative = MeterEvent(negated.id, organization.stripe_customer_id, -negated.stripe_value, negated.occurred_at)
    assert meter.send_one(negative, f"void-{negated.id}", "k-negative").outcome is Outcome.REPORTED
    settle(stripe)
    voided(settings, cancelled, "stripe_cancel")
    voided(settings, negated, "stripe_negative_event")
    voided(settings, credited, "manual_credit")

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "MATCH"
    assert "Database total (reported): 900 " in result.stdout  # kept and credited
    assert "2 voided (nothing of them billed at Stripe)" in result.stdout


def test_a_row_missing_at_stripe_with_a_void_is_not_offered_for_resending(runner, factory, usage_records, meter, settings):
    organization = factory.organization(stripe_customer_id="cus_void_missing")
    lost, voiding = (
        reported(usage_records, organization, YESTERDAY + dt.timedelta(hours=h, minutes=30), "0.000100") for h in (5, 6)
    )
    voided(settings, voiding, "stripe_cancel", state="pending")  # its cancel not made yet

    result = reconcile(runner, organization.id, "--since", rfc3339(YESTERDAY), "--until", rfc3339(TODAY))

    assert result.exit_code == 1, result.output
    assert f"    flask --app ingest_api usage retry --id {lost.id} --force" in result.stdout.splitlines()
    assert f"Do not re-send the 1 missing row(s) with a void ({voiding.id})" in result.stdout
    assert runner.invoke(args=["usage", "retry", "--id", str(voiding.id), "--force"]).exit_code == 0
    with db.transaction(settings.database_url) as session:  # a row with a void is never sent again
        assert session.get(models.UserBillableRequestLog, voiding.id).status == models.UsageStatus.REPORTED


def test_the_usage_apis_billed_total_is_what_reconcile_finds_at_stripe(runner, client, world, broker, settings, stripe):
    """Events recorded and reported by the worker's own code (one of them then voided by a
    cancel): the API's billed figures for the window, at the Stripe value's rounding,
    are the Stripe total reconcile finds at the local server."""
    meter = SettledMeter(settings, stripe, api="v2")
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=2)
    events = [
        world.event(model_name=model, input_tokens=tokens, output_tokens=tokens // 3 + 1,
                    occurred_at=start + dt.timedelta(minutes=7 * index, seconds=index, microseconds=index))
        for index, (model, tokens) in enumerate((m, t) for m in world.prices for t in (1, 777, 123_457))
    ]
    record(settings, events)
    shard = reporting.shard_of(world.organization.id)
    assert len(report(settings, broker, meter, shard).reported) == len(events)
    with db.transaction(settings.database_url) as session:
        usage_voids.request(session, events[1].id, "sent twice", "user-1")
    report(settings, broker, meter, shard)
    settle(stripe)
    window = {"from": rfc3339(start), "to": rfc3339(start + dt.timedelta(days=1))}

    answer = client.get("/api/billing/usage", headers=world.headers(),
                        query_string={"organization_id": str(world.organization.id), **window})
    result = reconcile(runner, world.organization.id, "--since", window["from"], "--until", window["to"])

    assert answer.status_code == 200, answer.get_json()
    billed = answer.get_json()["total"]["by_state"]["billed"]
    assert billed["events"] == len(events) - 1 and answer.get_json()["total"]["by_state"]["voided"]["events"] == 1
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "MATCH", result.output
    stripe_total = re.search(r"^Stripe total: +(\d+) ", result.stdout, re.M).group(1)
    assert billed["stripe_value"] == int(stripe_total)
    # The cost itself, rounded once per event as Stripe is sent it: never off by more than
    # half a unit per event.
    unit = Decimal(1).scaleb(-settings.stripe_value_decimals)
    assert abs(Decimal(billed["agent700_cost"]) - billed["stripe_value"] * unit) <= billed["events"] * unit / 2
