"""``intake waiting`` / ``intake set-aside``: accepted events no worker has recorded yet.

When recording stops moving (``a700_queue_depth{queue="billing:intake"}`` grows, the
oldest unreported age rises), ``intake waiting`` lists the oldest entries with their
age and how often a worker was handed them: an entry delivered again and again while
the ones behind it wait is what holds the pipeline up. ``intake set-aside`` moves such
an entry to ``rejected_usage_events`` with the operator's reason, so the rest is
recorded; ``usage failed`` then lists it and ``usage retry --id`` re-drives it once its
cause is fixed.
"""

from __future__ import annotations

import json
import re

import click
import redis
from flask.cli import AppGroup

from operator_cli import output, parameters, store
from shared import intake
from worker.set_aside import set_aside_entry

intake_cli = AppGroup("intake", help="Accepted events waiting to be recorded: list the oldest, set one aside.")
_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _summary(message: str | None) -> dict:
    """What an operator recognises an entry by; an unreadable message says so."""
    try:
        event = json.loads(message or "")
        return {key: event.get(key) for key in ("id", "organization_id", "model_name", "input_tokens", "output_tokens")}
    except (ValueError, AttributeError):
        return {"id": None, "unreadable": (message or "")[:80]}


@intake_cli.command("waiting")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many of the oldest entries.")
@output.json_option
def waiting(limit: int, as_json: bool) -> None:
    """List the oldest entries waiting in the intake, with their age and delivery count.

    DELIVERIES is how often a worker was handed the entry (0: none has read it yet). An
    entry delivered many times, older than the rest, is what holds recording up: set it
    aside with `intake set-aside --entry ENTRY --reason TEXT`.
    """
    client = store.broker()
    try:
        entries = intake.waiting_entries(client, limit)
        total = client.xlen(intake.STREAM)
    except redis.RedisError as error:
        raise click.ClickException(f"The broker could not be used: {error}") from None
    finally:
        client.close()
    rows = [(entry, _summary(entry.message)) for entry in entries]
    if as_json:
        output.print_json(
            {
                "waiting": total,
                "entries": [
                    {
                        "entry": entry.entry_id,
                        "age_seconds": round(entry.age_seconds, 3),
                        "deliveries": entry.deliveries,
                        "consumer": entry.consumer,
                        **summary,
                    }
                    for entry, summary in rows
                ],
            }
        )
        return
    if not entries:
        click.echo("The intake is empty: every accepted event is recorded.")
        return
    click.echo(f"{total} entr{'y' if total == 1 else 'ies'} waiting; the oldest {len(entries)}:")
    output.print_table(
        ["ENTRY", "AGE_S", "DELIVERIES", "EVENT", "ORGANIZATION", "MODEL"],
        [
            [
                entry.entry_id, f"{entry.age_seconds:.1f}", str(entry.deliveries), summary.get("id") or "(unreadable)",
                summary.get("organization_id") or "", summary.get("model_name") or "",
            ]
            for entry, summary in rows
        ],
        right=(1, 2),
    )


@intake_cli.command("set-aside")
@click.option("--entry", "entry_id", required=True, help="The entry's id, as `intake waiting` lists it (e.g. 1732870000000-0).")
@click.option("--reason", required=True, type=parameters.LABEL, help="Why, for whoever reads `usage failed` later.")
def set_aside(entry_id: str, reason: str) -> None:
    """Move an intake entry to the rejected events with a reason; print its event id.

    The entry leaves the intake, so the events behind it are recorded. `usage failed`
    lists it with the reason, the status endpoint answers `failed`, and `usage retry --id`
    re-drives it once its cause is fixed (it is then recorded at most once).
    """
    if not _ENTRY_ID.match(entry_id):
        raise click.BadParameter(f"{entry_id!r} is not a stream entry id (such as 1732870000000-0).", param_hint="'--entry'")
    client = store.broker()
    try:
        with store.operator_transaction() as session:
            event_id = set_aside_entry(session, client, entry_id, reason)
        # Only after the commit: the entry leaves the intake once it is kept elsewhere.
        intake.remove(client, [entry_id], [event_id])
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    except redis.RedisError as error:
        raise click.ClickException(f"The broker could not be used: {error}") from None
    finally:
        client.close()
    click.echo(f"Entry {entry_id} set aside as rejected event {event_id}; `usage failed` lists it.", err=True)
    click.echo(event_id)
