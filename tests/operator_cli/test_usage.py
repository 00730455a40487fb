"""``usage failed`` and ``usage retry``: listing what billing could not finish, and re-driving it.

Real PostgreSQL and Redis: a retried log row must leave a ``billing.report_shard`` task
message in the Celery queue, a retried rejected event a new entry in the intake stream.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from shared import db, intake, models, queue
from shared.operator_messages import RECONCILE_FIRST
from shared.usage_event import AcceptedUsageEvent
from tests.support.billing import no_customer_error
from tests.support.operator_commands import assert_refused
from worker.reporting import shard_of

CELERY_QUEUE = queue.QUEUE






def log_status(settings, row_id) -> tuple[str, str | None]:
    with db.transaction(settings.database_url) as session:
        row = session.get(models.UserBillableRequestLog, row_id)
        return row.status, row.error


def report_tasks(broker) -> list[int]:
    """The shards of the ``billing.report`` messages waiting in the Celery queue."""
    shards = []
    for raw in broker.lrange(CELERY_QUEUE, 0, -1):
        envelope = json.loads(raw)
        if envelope["headers"]["task"] != queue.REPORT:
            continue
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        shards.append(args[0])
    return sorted(shards)


def intake_events(broker) -> list[AcceptedUsageEvent]:
    return [AcceptedUsageEvent.from_message(fields[intake.EVENT_FIELD]) for _, fields in broker.xrange(intake.STREAM)]


# --- usage failed ------------------------------------------------------------------------


def test_failed_lists_failed_rows_and_unresolved_rejected_events_with_their_reasons(runner, factory, usage_records):
    organization = factory.organization(stripe_customer_id=None)
    failed = usage_records.log(organization, agent700_cost="0.000246900000")
    usage_records.log(organization, status=models.UsageStatus.REPORTED, error=None)
    usage_records.log(organization, status=models.UsageStatus.RECORDED, error=None)
    rejected = usage_records.rejected(organization, attempts=3)

    result = runner.invoke(args=["usage", "failed"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    failed_lines = [line for line in lines if line.startswith(str(failed.id))]
    assert len(failed_lines) == 1
    for cell in (str(organization.id), "0.000246900000", no_customer_error(organization)):
        assert cell in failed_lines[0]
    rejected_lines = [line for line in lines if line.startswith(str(rejected.id))]
    assert len(rejected_lines) == 1
    assert "Unknown service 'dictation'." in rejected_lines[0]
    assert " 3 " in rejected_lines[0]
    # Only the failed row and the rejected event: reported and recorded rows are not failures.
    assert sum(1 for line in lines if line[:36].count("-") == 4) == 2


def test_failed_json_for_scripts(runner, factory, usage_records):
    organization = factory.organization(name="Acme")
    failed = usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True, agent700_cost="1.5")
    rejected = usage_records.rejected(organization, reason="No price for model 'x'.", attempts=2)
    resolved = usage_records.rejected(organization)
    with db.transaction(usage_records.settings.database_url) as session:
        session.get(models.RejectedUsageEvent, resolved.id).resolved_at = dt.datetime.now(dt.UTC)

    result = runner.invoke(args=["usage", "failed", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["failed"] == [
        {
            "id": str(failed.id),
            "organization_id": str(organization.id),
            "organization_name": "Acme",
            "occurred_at": failed.occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "agent700_cost": "1.500000000000000000",
            "stripe_attempts": 0,
            "error": RECONCILE_FIRST,
            "needs_reconciliation": True,
        }
    ]
    assert [(r["id"], r["reason"], r["attempts"]) for r in document["rejected"]] == [
        (str(rejected.id), "No price for model 'x'.", 2)
    ]


def test_failed_says_so_when_there_is_nothing(runner, factory, usage_records):
    usage_records.log(factory.organization(), status=models.UsageStatus.REPORTED, error=None)

    result = runner.invoke(args=["usage", "failed"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "No failed events."

    result = runner.invoke(args=["usage", "failed", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"failed": [], "rejected": []}


# --- usage retry --id --------------------------------------------------------------------


def test_retry_id_puts_the_row_back_to_recorded_and_wakes_its_shard_reporter(runner, factory, usage_records, settings, broker):
    organization = factory.organization(stripe_customer_id="cus_fixed_now")
    row = usage_records.log(organization)
    other = usage_records.log(organization)

    result = runner.invoke(args=["usage", "retry", "--id", str(row.id)])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(row.id)
    assert "1 failed log row(s) back to recorded" in result.stderr
    assert log_status(settings, row.id) == (models.UsageStatus.RECORDED, None)
    assert log_status(settings, other.id) == (models.UsageStatus.FAILED, no_customer_error(organization))
    assert report_tasks(broker) == [shard_of(organization.id)]
    assert intake_events(broker) == []


def test_retry_id_restarts_the_rows_clock_so_the_sweeper_does_not_flag_it_again(runner, factory, usage_records, settings):
    row = usage_records.log(factory.organization())
    with db.transaction(settings.database_url) as session:
        session.get(models.UserBillableRequestLog, row.id).recorded_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)

    assert runner.invoke(args=["usage", "retry", "--id", str(row.id)]).exit_code == 0

    with db.transaction(settings.database_url) as session:
        recorded_at = session.get(models.UserBillableRequestLog, row.id).recorded_at
    assert dt.datetime.now(dt.UTC) - recorded_at < dt.timedelta(minutes=1)


def test_retry_id_of_a_rejected_event_appends_it_to_the_intake_again(runner, factory, usage_records, settings, broker):
    event = usage_records.rejected(factory.organization())

    result = runner.invoke(args=["usage", "retry", "--id", str(event.id)])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(event.id)
    assert "1 rejected event(s) appended to the intake stream again" in result.stderr
    assert intake_events(broker) == [event]
    # Its status reads "queued" again until the worker records it, as for a new event.
    assert AcceptedUsageEvent.from_message(broker.get(intake.QUEUED_KEY.format(event_id=event.id))) == event
    assert report_tasks(broker) == []


def test_retry_accepts_several_ids(runner, factory, usage_records, settings, broker):
    first, second = factory.organization(), factory.organization()
    rows = [usage_records.log(first), usage_records.log(second)]
    event = usage_records.rejected(first)

    result = runner.invoke(args=["usage", "retry", "--id", str(rows[0].id), "--id", str(event.id), "--id", str(rows[1].id)])

    assert result.exit_code == 0, result.output
    assert set(result.stdout.splitlines()[-1].split()) == {str(rows[0].id), str(rows[1].id), str(event.id)}
    assert report_tasks(broker) == sorted({shard_of(first.id), shard_of(second.id)})
    assert [e.id for e in intake_events(broker)] == [event.id]


def test_retry_id_refuses_an_unknown_id(runner, usage_records, broker):
    unknown = uuid.uuid4()

    result = runner.invoke(args=["usage", "retry", "--id", str(unknown)])

    assert_refused(result, str(unknown), "No failed or rejected event", exit_code=1)
    assert report_tasks(broker) == [] and intake_events(broker) == []


@pytest.mark.parametrize("status", [models.UsageStatus.RECORDED, models.UsageStatus.REPORTED])
def test_retry_id_refuses_a_row_that_is_not_failed(runner, factory, usage_records, settings, broker, status):
    row = usage_records.log(factory.organization(), status=status, error=None)

    result = runner.invoke(args=["usage", "retry", "--id", str(row.id)])

    assert_refused(result, str(row.id), f"is {status}, not failed", exit_code=1)
    assert log_status(settings, row.id) == (status, None)
    assert report_tasks(broker) == []


def test_retry_id_refuses_a_resolved_rejected_event(runner, factory, usage_records, settings, broker):
    event = usage_records.rejected(factory.organization())
    with db.transaction(settings.database_url) as session:
        session.get(models.RejectedUsageEvent, event.id).resolved_at = dt.datetime.now(dt.UTC)

    result = runner.invoke(args=["usage", "retry", "--id", str(event.id)])

    assert_refused(result, "already resolved", exit_code=1)
    assert intake_events(broker) == []


def test_retry_with_one_bad_id_among_several_changes_nothing(runner, factory, usage_records, settings, broker):
    organization = factory.organization()
    row = usage_records.log(organization)

    result = runner.invoke(args=["usage", "retry", "--id", str(row.id), "--id", str(uuid.uuid4())])

    assert_refused(result, "No failed or rejected event", exit_code=1)
    assert log_status(settings, row.id) == (models.UsageStatus.FAILED, no_customer_error(organization))
    assert report_tasks(broker) == []


def test_retry_id_of_a_row_flagged_for_reconciliation_needs_force(runner, factory, usage_records, settings, broker):
    organization = factory.organization()
    row = usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True)

    refused = runner.invoke(args=["usage", "retry", "--id", str(row.id)])

    assert_refused(refused, "needs reconciliation", "--force", exit_code=1)
    assert log_status(settings, row.id) == (models.UsageStatus.FAILED, RECONCILE_FIRST)
    assert report_tasks(broker) == []

    forced = runner.invoke(args=["usage", "retry", "--id", str(row.id), "--force"])

    assert forced.exit_code == 0, forced.output
    assert forced.stdout.splitlines()[-1] == str(row.id)
    assert log_status(settings, row.id) == (models.UsageStatus.RECORDED, None)
    assert report_tasks(broker) == [shard_of(organization.id)]


def test_retry_id_force_redrives_a_reported_row_stripe_does_not_have(runner, factory, usage_records, settings, broker):
    """Only after `stripe reconcile` named it missing at Stripe; without --force it is refused."""
    organization = factory.organization()
    row = usage_records.log(organization, status=models.UsageStatus.REPORTED, error=None)

    refused = runner.invoke(args=["usage", "retry", "--id", str(row.id)])

    assert_refused(refused, f"Event {row.id} is reported, not failed", "stripe reconcile", "--force", exit_code=1)
    assert log_status(settings, row.id) == (models.UsageStatus.REPORTED, None)
    assert report_tasks(broker) == []

    forced = runner.invoke(args=["usage", "retry", "--id", str(row.id), "--force"])

    assert forced.exit_code == 0, forced.output
    assert forced.stdout.splitlines()[-1] == str(row.id)
    assert "1 reported (forced) log row(s) back to recorded" in forced.stderr
    assert log_status(settings, row.id) == (models.UsageStatus.RECORDED, None)
    with db.transaction(settings.database_url) as session:
        assert session.get(models.UserBillableRequestLog, row.id).stripe_reported_at is None
    assert report_tasks(broker) == [shard_of(organization.id)]


def test_retry_id_force_takes_failed_and_reported_rows_together(runner, factory, usage_records, settings, broker):
    organization = factory.organization()
    failed = usage_records.log(organization)
    reported = usage_records.log(organization, status=models.UsageStatus.REPORTED, error=None)

    result = runner.invoke(args=["usage", "retry", "--id", str(failed.id), "--id", str(reported.id), "--force"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].split() == [str(failed.id), str(reported.id)]
    assert "1 failed and 1 reported (forced) log row(s) back to recorded" in result.stderr
    assert log_status(settings, failed.id) == log_status(settings, reported.id) == (models.UsageStatus.RECORDED, None)


def test_retry_id_force_still_refuses_a_recorded_row(runner, factory, usage_records, settings, broker):
    row = usage_records.log(factory.organization(), status=models.UsageStatus.RECORDED, error=None)

    result = runner.invoke(args=["usage", "retry", "--id", str(row.id), "--force"])

    assert_refused(result, "is recorded, not failed", exit_code=1)
    assert report_tasks(broker) == []


# --- usage retry --all-failed ------------------------------------------------------------


def test_retry_all_failed_redrives_every_failure_but_rows_flagged_for_reconciliation(
    runner, factory, usage_records, settings, broker
):
    organizations = [factory.organization() for _ in range(6)]
    rows = [usage_records.log(organization) for organization in organizations]
    flagged = usage_records.log(organizations[0], error=RECONCILE_FIRST, needs_reconciliation=True)
    reported = usage_records.log(organizations[1], status=models.UsageStatus.REPORTED, error=None)
    events = [usage_records.rejected(organizations[2]), usage_records.rejected(organizations[3])]

    result = runner.invoke(args=["usage", "retry", "--all-failed"])

    assert result.exit_code == 0, result.output
    assert set(result.stdout.splitlines()[-1].split()) == {str(r.id) for r in rows} | {str(e.id) for e in events}
    assert f"Re-driven: {len(rows) + len(events)} event(s)" in result.stderr
    assert "Skipped 1 row(s) that need reconciliation" in result.stderr and str(flagged.id) in result.stderr
    assert all(log_status(settings, r.id) == (models.UsageStatus.RECORDED, None) for r in rows)
    assert log_status(settings, flagged.id) == (models.UsageStatus.FAILED, RECONCILE_FIRST)
    assert log_status(settings, reported.id) == (models.UsageStatus.REPORTED, None)
    # One task per shard, however many rows and organizations share it.
    assert report_tasks(broker) == sorted({shard_of(o.id) for o in organizations})
    assert sorted(e.id for e in intake_events(broker)) == sorted(e.id for e in events)


def test_retry_all_failed_include_unreconciled_takes_the_flagged_rows_too(runner, factory, usage_records, settings, broker):
    organization = factory.organization()
    flagged = usage_records.log(organization, error=RECONCILE_FIRST, needs_reconciliation=True)

    result = runner.invoke(args=["usage", "retry", "--all-failed", "--include-unreconciled"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(flagged.id)
    assert log_status(settings, flagged.id) == (models.UsageStatus.RECORDED, None)
    assert report_tasks(broker) == [shard_of(organization.id)]


def test_the_reconciliation_flag_not_the_error_text_decides_what_a_retry_skips(runner, factory, usage_records, settings):
    """Rewording the reason changes nothing of what a row means: the flag is a column."""
    organization = factory.organization()
    flagged = usage_records.log(organization, error="Reworded: reconcile this one first.", needs_reconciliation=True)
    same_text_not_flagged = usage_records.log(organization, error=RECONCILE_FIRST)

    result = runner.invoke(args=["usage", "retry", "--all-failed"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(same_text_not_flagged.id)
    assert "Skipped 1 row(s) that need reconciliation" in result.stderr and str(flagged.id) in result.stderr
    assert log_status(settings, flagged.id) == (models.UsageStatus.FAILED, "Reworded: reconcile this one first.")
    listing = runner.invoke(args=["usage", "failed", "--json"])
    assert [row["needs_reconciliation"] for row in json.loads(listing.stdout)["failed"]] == [True]


def test_a_failed_row_first_sent_more_than_23_hours_ago_is_retried_only_after_reconciliation(
    runner, factory, usage_records, settings
):
    """Stripe may have counted it (a drop its lagging summaries suggested) and no longer
    deduplicates its identifier: a plain retry would bill it twice."""
    organization = factory.organization()
    first_sent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=23, minutes=5)
    dropped_long_ago = usage_records.log(organization, error="Dropped by Stripe", stripe_first_sent_at=first_sent)
    dropped_lately = usage_records.log(
        organization, error="Dropped by Stripe", stripe_first_sent_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    )

    result = runner.invoke(args=["usage", "retry", "--all-failed"])
    assert result.stdout.splitlines()[-1] == str(dropped_lately.id)
    assert "Skipped 1 row(s) that need reconciliation" in result.stderr and str(dropped_long_ago.id) in result.stderr
    assert_refused(runner.invoke(args=["usage", "retry", "--id", str(dropped_long_ago.id)]), "needs reconciliation", "--force")
    listing = json.loads(runner.invoke(args=["usage", "failed", "--json"]).stdout)["failed"]
    assert [(row["id"], row["needs_reconciliation"]) for row in listing] == [(str(dropped_long_ago.id), True)]

    forced = runner.invoke(args=["usage", "retry", "--id", str(dropped_long_ago.id), "--force"])

    assert forced.exit_code == 0, forced.output
    with db.transaction(settings.database_url) as session:
        row = session.get(models.UserBillableRequestLog, dropped_long_ago.id)
        # Reconciled: Stripe lacks it, so its resend starts a new identifier window.
        assert (row.status, row.stripe_first_sent_at) == (models.UsageStatus.RECORDED, None)
        lately = session.get(models.UserBillableRequestLog, dropped_lately.id)
        assert lately.stripe_first_sent_at is not None  # within the window: kept


def test_retry_all_failed_with_nothing_failed(runner, factory, usage_records, broker):
    usage_records.log(factory.organization(), status=models.UsageStatus.REPORTED, error=None)

    result = runner.invoke(args=["usage", "retry", "--all-failed"])

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "Nothing to re-drive." in result.stderr
    assert report_tasks(broker) == []


def test_retry_all_failed_skips_a_rejected_event_whose_message_was_unreadable(runner, settings, broker):
    unreadable_id = uuid.uuid4()
    with db.transaction(settings.database_url) as session:
        session.add(
            models.RejectedUsageEvent(
                id=unreadable_id, payload={"stream_entry": "1-0", "message": "{"}, reason="Unreadable queue message"
            )
        )

    result = runner.invoke(args=["usage", "retry", "--all-failed"])

    assert result.exit_code == 0, result.output
    assert "Skipped 1 rejected event(s) whose queue message is unreadable" in result.stderr
    assert intake_events(broker) == []

    by_id = runner.invoke(args=["usage", "retry", "--id", str(unreadable_id)])
    assert_refused(by_id, "cannot be re-driven", exit_code=1)


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "Give either --id"),
        (["--id", str(uuid.UUID(int=1)), "--all-failed"], "Give either --id"),
        (["--all-failed", "--force"], "--force goes with --id"),
        (["--id", str(uuid.UUID(int=1)), "--include-unreconciled"], "--include-unreconciled goes with --all-failed"),
        (["--id", "not-a-uuid"], "not a valid UUID"),
    ],
)
def test_retry_refuses_bad_usage(runner, args, fragment):
    result = runner.invoke(args=["usage", "retry", *args])

    assert_refused(result, fragment, exit_code=2)


def test_retry_help_explains_the_reconciliation_rule(runner):
    result = runner.invoke(args=["usage", "retry", "--help"])

    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "24-hour identifier window" in help_text
    assert "--include-unreconciled" in help_text and "--force" in help_text
    assert "twice" in help_text
    assert "only after `stripe reconcile` showed Stripe does not have it" in help_text


def test_failed_and_retried_rows_read_back_through_the_database(runner, factory, usage_records, session):
    """The listing reflects a retry at once: the retried row is no longer failed."""
    row = usage_records.log(factory.organization())
    assert str(row.id) in runner.invoke(args=["usage", "failed"]).stdout

    assert runner.invoke(args=["usage", "retry", "--id", str(row.id)]).exit_code == 0

    assert runner.invoke(args=["usage", "failed"]).stdout.strip() == "No failed events."
    failed_count = session.scalar(
        sa.select(sa.func.count())
        .select_from(models.UserBillableRequestLog)
        .where(models.UserBillableRequestLog.status == models.UsageStatus.FAILED)
    )
    assert failed_count == 0
