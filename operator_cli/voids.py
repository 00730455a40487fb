"""``usage void`` / ``usage voids`` / ``usage credit-issued`` / ``usage void-settled``: taking back events that
should never have been billed, from the command line, as the API does
(``shared.usage_voids`` is a void's life; the shard's reporter does Stripe's side)."""

from __future__ import annotations

import getpass
import uuid

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from operator_cli import output, store
from shared import models, queue, usage_voids
from shared.models import UsageVoid, VoidMethod, VoidState

_logs = models.UserBillableRequestLog


@click.command("void")
@with_appcontext
@click.option("--id", "event_id", required=True, type=click.UUID, help="The event to take back.")
@click.option("--reason", required=True, help="Why it should never have been billed (1 to 500 characters).")
def void(event_id: uuid.UUID, reason: str) -> None:
    """Void an event, as POST .../{id}/void does: Stripe's side follows exactly once."""
    if not reason.strip() or len(reason) > usage_voids.MAX_REASON_CHARS:
        raise click.BadParameter(f"1 to {usage_voids.MAX_REASON_CHARS} characters, not only spaces.", param_hint="--reason")
    with store.operator_transaction() as session:
        try:
            asked = usage_voids.request(session, event_id, reason, f"operator:{getpass.getuser()}")
        except usage_voids.VoidRefused as refused:
            raise click.ClickException(str(refused)) from None
        if asked is None:
            raise click.ClickException(
                f"No recorded event {event_id}: unknown, refused by the recorder, or still queued (void it once recorded)."
            )
        method, state = asked.method, asked.state
        organization_id = session.get(_logs, event_id).organization_id
    if state == VoidState.PENDING and method in usage_voids.STRIPE_METHODS:
        store.wake_reporters([queue.shard_of(organization_id)])
    done = "complete" if state == VoidState.COMPLETED else "under way" if state == VoidState.PENDING else state
    click.echo(f"Void of {event_id}: {method}, {done}.")
    click.echo(str(event_id))


@click.command("voids")
@with_appcontext
@click.option("--needs-credit", is_flag=True, help="Only manual credits finance has not issued yet, with their amounts.")
@output.json_option
def list_voids(needs_credit: bool, as_json: bool) -> None:
    """List voids with their method and state (``--needs-credit``: what finance must credit)."""
    query = sa.select(UsageVoid, _logs.organization_id, _logs.agent700_cost).join(_logs, _logs.id == UsageVoid.row_id)
    if needs_credit:
        query = query.where(UsageVoid.method == VoidMethod.MANUAL_CREDIT, UsageVoid.state != VoidState.COMPLETED)
    with store.operator_transaction() as session:
        listed = session.execute(query.order_by(UsageVoid.requested_at)).all()
    if as_json:
        output.print_json({
            "voids": [_as_json(v, organization_id, cost) for v, organization_id, cost in listed],
            **({"total_agent700_cost": format(sum((c for _, _, c in listed), start=0), "f")} if needs_credit else {}),
        })
        return
    output.print_table(
        ["event", "organization", "agent700_cost", "method", "state", "requested", "by", "completed", "reason / error"],
        [[str(v.row_id), str(organization_id), format(cost, "f"), v.method, v.state, output.time_text(v.requested_at),
          v.requested_by, output.time_text(v.completed_at), v.error or v.reason] for v, organization_id, cost in listed],
        right=[2],
    )
    if needs_credit:
        click.echo(f"Total to credit: {format(sum((c for _, _, c in listed), start=0), 'f')} USD in {len(listed)} event(s)")


def _as_json(v: UsageVoid, organization_id: uuid.UUID, cost) -> dict:
    return {
        "event_id": str(v.row_id), "organization_id": str(organization_id), "agent700_cost": format(cost, "f"),
        "method": v.method, "state": v.state, "reason": v.reason, "requested_at": output.time_text(v.requested_at),
        "requested_by": v.requested_by, "completed_at": output.time_text(v.completed_at) or None,
        "stripe_identifier": v.stripe_identifier, "stripe_request_key": v.stripe_request_key, "error": v.error,
        "credit_note": v.credit_note, "settled_by": v.settled_by, "settled_note": v.settled_note,
    }


@click.command("credit-issued")
@with_appcontext
@click.option("--id", "event_id", required=True, type=click.UUID, help="The event of a manual_credit void.")
@click.option("--note", required=True, help="The credit note finance issued (its number, or how it was credited).")
def credit_issued(event_id: uuid.UUID, note: str) -> None:
    """Finance credited a manual_credit void: it is complete, and the event voided."""
    with store.operator_transaction() as session:
        try:
            usage_voids.credit_issued(session, event_id, note)
        except usage_voids.VoidRefused as refused:
            raise click.ClickException(str(refused)) from None
    click.echo(f"Manual credit of {event_id} recorded: the event is voided.")
    click.echo(str(event_id))


@click.command("void-settled")
@with_appcontext
@click.option("--id", "event_id", required=True, type=click.UUID, help="The event whose void is refused or failed.")
@click.option("--stripe-bills", required=True, type=click.Choice(["nothing", "the-event"]),
              help="What `stripe reconcile` showed Stripe bills of the event.")
@click.option("--note", required=True, help="What you saw (the reconcile's window and figures).")
@click.option("--reason", help="Why it should never have been billed, when it has no void yet.")
def void_settled(event_id: uuid.UUID, stripe_bills: str, note: str, reason: str | None) -> None:
    """Settle a void that needs `stripe reconcile`, with what it showed.

    A void is refused, or fails, when Stripe may hold the event without deduplicating it
    any more (its first send is over a day old and not confirmed). Run `stripe reconcile`
    for its organization over the event's minute, then: `--stripe-bills nothing` (Stripe
    counts none of it) completes the void; `--stripe-bills the-event` sends a negative
    event of its value (a manual credit, past Stripe's 35 days).
    """
    with store.operator_transaction() as session:
        try:
            settled = usage_voids.settled(
                session, event_id, stripe_bills == "the-event", note, f"operator:{getpass.getuser()}", reason,
            )
        except usage_voids.VoidRefused as refused:
            raise click.ClickException(str(refused)) from None
        method, state = settled.method, settled.state
        organization_id = session.get(_logs, event_id).organization_id
    if state == VoidState.PENDING and method in usage_voids.STRIPE_METHODS:
        store.wake_reporters([queue.shard_of(organization_id)])
    done = "complete" if state == VoidState.COMPLETED else "under way"
    click.echo(f"Void of {event_id} settled: {method}, {done}.")
    click.echo(str(event_id))
