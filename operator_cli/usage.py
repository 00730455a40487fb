"""``usage failed`` / ``usage retry``: the events billing could not finish, and re-driving them.

Two kinds of failure are kept, never dropped:

- a log row with status ``failed``: recorded and costed, but Stripe could not take it
  (no Stripe customer id, a permanent refusal) or it was flagged for reconciliation;
- an unresolved ``rejected_usage_events`` row: accepted by the API but not recordable
  (unknown service, no price in effect, ...), kept with the accepted event as payload.

Re-driving hands them back to the worker, which is idempotent for both: a log row goes
back to ``recorded`` and its shard's reporter is woken (Stripe deduplicates by the row id
within 24 hours); a rejected event is appended to the intake stream again and recorded at
most once (by event id). A row with status ``reported`` that ``stripe reconcile`` found
missing at Stripe is re-driven the same way, but only when forced by id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import click
import pydantic
import sqlalchemy as sa
from flask.cli import AppGroup
from sqlalchemy import orm

from operator_cli import output, store, usage_totals, voids
from shared import models, queue, usage_rows
from shared.intake import Intake, OutcomeUnknown, QueueUnavailable
from shared.usage_event import AcceptedUsageEvent
from worker.reporting import shard_of

usage_cli = AppGroup(
    "usage", help="Usage events billing could not finish: list them, re-drive them; void them; sum an organization's."
)
for _command in (voids.void, voids.list_voids, voids.credit_issued, voids.void_settled, usage_totals.summary):
    usage_cli.add_command(_command)

_logs = models.UserBillableRequestLog
_rejected = models.RejectedUsageEvent


# --- usage failed ------------------------------------------------------------------------


@dataclass(frozen=True)
class _FailedListing:
    failed: list  # failed log rows
    rejected: list  # unresolved rejected events

    @property
    def unreconciled(self) -> int:
        return sum(row.needs_reconciliation for row in self.failed)


@usage_cli.command("failed")
@output.json_option
def list_failed(as_json: bool) -> None:
    """List failed events with their reasons.

    Log rows with status failed (recorded, but not reported to Stripe) and accepted events
    that could not be recorded (rejected, not yet resolved). Fix the cause, then run
    `usage retry`.
    """
    with store.operator_transaction() as session:
        listing = _failed_listing(session)
    if as_json:
        _print_failed_json(listing)
    else:
        _print_failed_tables(listing)


def _failed_listing(session: orm.Session) -> _FailedListing:
    failed = session.execute(
        sa.select(
            _logs.id, _logs.organization_id, models.Organization.name.label("organization_name"),
            _logs.occurred_at, _logs.agent700_cost, _logs.stripe_attempts, _logs.error, usage_rows.unreconciled().label("needs_reconciliation"),
        )
        .join(models.Organization, models.Organization.id == _logs.organization_id)
        .where(_logs.status == models.UsageStatus.FAILED)
        .order_by(_logs.recorded_at, _logs.id)
    ).all()
    rejected = session.execute(
        sa.select(_rejected.id, _rejected.reason, _rejected.attempts, _rejected.rejected_at)
        .where(_rejected.resolved_at.is_(None))
        .order_by(_rejected.rejected_at, _rejected.id)
    ).all()
    return _FailedListing(failed, rejected)


def _print_failed_json(listing: _FailedListing) -> None:
    output.print_json({
        "failed": [
            {
                "id": str(row.id),
                "organization_id": str(row.organization_id),
                "organization_name": row.organization_name,
                "occurred_at": output.time_text(row.occurred_at),
                "agent700_cost": str(row.agent700_cost),
                "stripe_attempts": row.stripe_attempts,
                "error": row.error,
                "needs_reconciliation": row.needs_reconciliation,
            }
            for row in listing.failed
        ],
        "rejected": [
            {"id": str(row.id), "reason": row.reason, "attempts": row.attempts, "rejected_at": output.time_text(row.rejected_at)}
            for row in listing.rejected
        ],
    })


def _print_failed_tables(listing: _FailedListing) -> None:
    failed, rejected = listing.failed, listing.rejected
    if not failed and not rejected:
        click.echo("No failed events.")
        return
    if failed:
        click.echo(f"Failed log rows, recorded but not reported to Stripe ({len(failed)}):")
        output.print_table(
            ["ID", "ORGANIZATION", "OCCURRED_AT", "AGENT700_COST", "ERROR"],
            [
                [str(row.id), str(row.organization_id), output.time_text(row.occurred_at), str(row.agent700_cost), row.error or ""]
                for row in failed
            ],
        )
    if failed and rejected:
        click.echo()
    if rejected:
        click.echo(f"Rejected events, accepted but not recorded ({len(rejected)}):")
        output.print_table(
            ["ID", "REJECTED_AT", "ATTEMPTS", "REASON"],
            [[str(row.id), output.time_text(row.rejected_at), str(row.attempts), row.reason] for row in rejected],
        )
    if listing.unreconciled:
        click.echo(
            f"\n{listing.unreconciled} row(s) need `stripe reconcile` before a retry: "
            "`usage retry --all-failed` skips them unless --include-unreconciled is given.",
        )


# --- usage retry -------------------------------------------------------------------------


@dataclass
class _RetryPlan:
    rows: list[uuid.UUID]  # failed log rows to put back to recorded
    events: list[AcceptedUsageEvent]  # unresolved rejected events to append to the intake again
    # reported log rows Stripe does not have (--id ID --force), to put back to recorded
    reported_rows: list[uuid.UUID] = field(default_factory=list)
    # of ``rows``, those that needed reconciliation and are re-driven after it (forced)
    reconciled_rows: set[uuid.UUID] = field(default_factory=set)


@usage_cli.command("retry")
@click.option("--id", "event_ids", multiple=True, type=click.UUID,
              help="A failed log row's or rejected event's id (as `usage failed` lists it); repeat for several.")
@click.option("--all-failed", is_flag=True, help="Every failed log row and every unresolved rejected event.")
@click.option("--include-unreconciled", is_flag=True,
              help="With --all-failed: also rows flagged for reconciliation (see the description above).")
@click.option("--force", is_flag=True,
              help="With --id: re-drive a row flagged for reconciliation, or a reported row `stripe reconcile` "
                   "showed Stripe does not have (see the description above).")
def retry(event_ids: tuple[uuid.UUID, ...], all_failed: bool, include_unreconciled: bool, force: bool) -> None:
    """Re-drive failed events once their cause is fixed; print the re-driven ids.

    A failed log row goes back to `recorded` (its error cleared) and the reporter of its
    organization is woken: it is reported to Stripe once, under the same identifier. A
    rejected event is appended to the intake stream again, so the worker records it (at
    most once, by event id); if its cause is not fixed, it is rejected again.

    Rows that need reconciliation (flagged: not reported within Stripe's 24-hour
    identifier window; or failed rows first sent to Stripe more than 23 hours ago) may
    already be counted at Stripe, which no longer deduplicates them: sending them again
    could bill them twice. Run `stripe reconcile` for their organization
    first; then re-drive them with `--id ID --force`, or with `--all-failed
    --include-unreconciled`. `--all-failed` alone skips them.

    A row with status reported is refused, unless given as `--id ID --force`: do that
    only after `stripe reconcile` showed Stripe does not have it. It goes back to
    recorded (its error cleared) and is sent again under the same identifier; within 24
    hours of its first report Stripe would deduplicate it, after that a row Stripe does
    have would be counted twice.

    Standard output is one line: the re-driven ids, space-separated (a summary goes to
    standard error).
    """
    _check_retry_options(event_ids, all_failed, include_unreconciled, force)
    settings = store.current_settings()
    with store.operator_transaction() as session:
        if all_failed:
            plan, skipped = _plan_all_failed(session, include_unreconciled)
        else:
            plan, skipped = _plan_by_id(session, list(dict.fromkeys(event_ids)), force), []
    shards = _apply_retry(settings, plan)
    _print_retry(plan, skipped, shards)


def _check_retry_options(event_ids, all_failed: bool, include_unreconciled: bool, force: bool) -> None:
    if bool(event_ids) == all_failed:
        raise click.UsageError("Give either --id (one or more) or --all-failed.")
    if force and not event_ids:
        raise click.UsageError("--force goes with --id; with --all-failed use --include-unreconciled.")
    if include_unreconciled and not all_failed:
        raise click.UsageError("--include-unreconciled goes with --all-failed; with --id use --force.")


def _apply_retry(settings, plan: _RetryPlan) -> set[int]:
    """Re-drive what the plan holds; trims it to the rows that moved (a concurrent retry,
    or a row changed meanwhile, is not re-driven twice). The shards woken."""
    # Events first: if the broker is unreachable, nothing has changed yet.
    if plan.events:
        _append_to_intake(settings, plan.events)
    if not (plan.rows or plan.reported_rows):
        return set()
    with store.operator_transaction() as session:
        redriven = usage_rows.redrive(session, plan.rows, plan.reported_rows, reconciled=plan.reconciled_rows)
    changed = {row.id for row in redriven}
    plan.rows = [row_id for row_id in plan.rows if row_id in changed]
    plan.reported_rows = [row_id for row_id in plan.reported_rows if row_id in changed]
    shards = {shard_of(row.organization_id) for row in redriven}
    store.wake_reporters(shards)
    return shards


def _print_retry(plan: _RetryPlan, skipped: list[str], shards: set[int]) -> None:
    for note in skipped:
        click.echo(note, err=True)
    redriven_ids = [*map(str, plan.rows), *map(str, plan.reported_rows), *(str(event.id) for event in plan.events)]
    if not redriven_ids:
        click.echo("Nothing to re-drive.", err=True)
        return
    if plan.rows or plan.reported_rows:
        kinds = [f"{len(plan.rows)} failed"] if plan.rows else []
        kinds += [f"{len(plan.reported_rows)} reported (forced)"] if plan.reported_rows else []
        click.echo(
            f"{' and '.join(kinds)} log row(s) back to recorded; reporter woken for shard(s) "
            f"{', '.join(map(str, sorted(shards)))}.",
            err=True,
        )
    if plan.events:
        click.echo(f"{len(plan.events)} rejected event(s) appended to the intake stream again.", err=True)
    click.echo(f"Re-driven: {len(redriven_ids)} event(s); their ids:", err=True)
    click.echo(" ".join(redriven_ids))


def _plan_by_id(session: orm.Session, event_ids: list[uuid.UUID], force: bool) -> _RetryPlan:
    """Every id must be re-drivable, or nothing is done: the first problem is the error."""
    logs = {row.id: row for row in session.execute(
        sa.select(_logs.id, _logs.status, usage_rows.unreconciled().label("needs_reconciliation")).where(_logs.id.in_(event_ids))
    )}
    rejected = {row.id: row for row in session.scalars(sa.select(_rejected).where(_rejected.id.in_(event_ids)))}
    plan = _RetryPlan(rows=[], events=[])
    for event_id in event_ids:
        log_row = logs.get(event_id)
        if log_row is not None:
            if log_row.status == models.UsageStatus.REPORTED and force:
                plan.reported_rows.append(event_id)
                continue
            if log_row.status == models.UsageStatus.REPORTED:
                raise click.ClickException(
                    f"Event {event_id} is reported, not failed; there is nothing to retry (only if `stripe reconcile` "
                    "showed Stripe does not have it: --force)."
                )
            if log_row.status != models.UsageStatus.FAILED:
                raise click.ClickException(f"Event {event_id} is {log_row.status}, not failed; there is nothing to retry.")
            if log_row.needs_reconciliation and not force:
                raise click.ClickException(
                    f"Event {event_id} needs reconciliation (first sent too long ago for Stripe to deduplicate); "
                    "run `stripe reconcile` for its organization, then retry it with --force."
                )
            plan.rows.append(event_id)
            if log_row.needs_reconciliation:
                plan.reconciled_rows.add(event_id)
        elif event_id in rejected:
            rejection = rejected[event_id]
            if rejection.resolved_at is not None:
                raise click.ClickException(f"Rejected event {event_id} is already resolved; there is nothing to retry.")
            plan.events.append(_accepted_event(rejection))
        else:
            raise click.ClickException(f"No failed or rejected event with id {event_id}.")
    return plan


def _plan_all_failed(session: orm.Session, include_unreconciled: bool) -> tuple[_RetryPlan, list[str]]:
    failed = session.execute(
        sa.select(_logs.id, usage_rows.unreconciled().label("needs_reconciliation"))
        .where(_logs.status == models.UsageStatus.FAILED)
        .order_by(_logs.recorded_at)
    ).all()
    unreconciled = [row.id for row in failed if row.needs_reconciliation]
    rows = [row.id for row in failed if include_unreconciled or not row.needs_reconciliation]
    reconciled = set(unreconciled) if include_unreconciled else set()
    skipped = []
    if unreconciled and not include_unreconciled:
        skipped.append(
            f"Skipped {len(unreconciled)} row(s) that need reconciliation (run `stripe reconcile`, then "
            f"--include-unreconciled): {' '.join(map(str, unreconciled))}"
        )
    events, unreadable = [], []
    for rejection in session.scalars(
        sa.select(_rejected).where(_rejected.resolved_at.is_(None)).order_by(_rejected.rejected_at)
    ):
        try:
            events.append(_accepted_event(rejection))
        except click.ClickException:
            unreadable.append(rejection.id)
    if unreadable:
        skipped.append(
            f"Skipped {len(unreadable)} rejected event(s) whose queue message is unreadable: "
            f"{' '.join(map(str, unreadable))}"
        )
    return _RetryPlan(rows=rows, events=events, reconciled_rows=reconciled), skipped


def _accepted_event(rejection: models.RejectedUsageEvent) -> AcceptedUsageEvent:
    try:
        event = AcceptedUsageEvent.model_validate(rejection.payload)
    except pydantic.ValidationError:
        raise click.ClickException(
            f"Rejected event {rejection.id} cannot be re-driven: its payload is not an accepted usage event "
            "(an unreadable queue message)."
        ) from None
    if event.id != rejection.id:
        raise click.ClickException(f"Rejected event {rejection.id} cannot be re-driven: its payload is event {event.id}.")
    return event


def _append_to_intake(settings, events: list[AcceptedUsageEvent]) -> None:
    """Queue the events again, as the API does (their "queued" status records too)."""
    writer = Intake.for_settings(settings, store.BROKER_TIMEOUT_SECONDS)
    try:
        if writer.redrive(events).wake_recorder:
            queue.wake_recorder()
    except QueueUnavailable as error:
        raise click.ClickException(f"The broker could not be used, nothing was re-driven: {error}") from None
    except OutcomeUnknown:
        raise click.ClickException(
            "The broker did not confirm the re-drive (its reply was lost); run the command again: "
            "an event re-driven twice is still recorded once."
        ) from None
    finally:
        writer.close()
