"""Recording: from accepted events to exactly one ``user_billable_request_logs`` row each.

A batch of intake entries is costed and written with one ``INSERT ... ON CONFLICT DO
NOTHING``: a redelivered entry, a retried task or two workers racing on the same entry
can never make a second row. The entries are acknowledged only after that commit (see
``shared.intake``), so a worker killed at any point loses nothing.

One event never holds up another. An event that cannot be billed (unknown service, no
price in effect, ...) or cannot be priced or stored (a data error, not a broken
connection) is kept in ``rejected_usage_events`` with a readable reason, and the rest of
its batch is recorded. A broken connection fails the whole batch, which is read again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import pydantic
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import insert

from shared import intake, models, usage_rows
from shared.usage_event import AcceptedUsageEvent
from worker import pricing, rejected_events
from worker.rejected_events import Rejection

log = logging.getLogger(__name__)
# Entries a record task takes at most. Under load a batch's rows wake their shards'
# reporters, so it also sets how many rows a report round finds: at 500, rounds of about
# 100 rows made the per-round overhead the limit (3,500 events/s offered drained in 10 s
# after the load); at 2,000, in 0.6 s (BENCHMARKS.md). Idle or light, a batch is whatever waits.
BATCH_SIZE = 2000
_logs = models.UserBillableRequestLog.__table__


@dataclass
class Recording:
    recorded: list[uuid.UUID] = field(default_factory=list)
    rejected: dict[uuid.UUID, str] = field(default_factory=dict)
    organizations: set[uuid.UUID] = field(default_factory=set)  # of newly recorded rows
    event_ids: list[uuid.UUID] = field(default_factory=list)  # every readable event of the batch


@dataclass(frozen=True)
class _Catalog:
    """What the batch's events refer to, read once per batch."""

    services: dict[str, uuid.UUID]
    prices: pricing.PriceBook
    users: set[uuid.UUID]
    organizations: set[uuid.UUID]


def record_next_batch(transaction, reader: intake.IntakeReader, *, value_decimals: int) -> tuple[int, Recording]:
    """Read one batch from the intake, record it in a transaction of its own
    (``transaction()``), and acknowledge it only after the commit. (entries read, what
    was recorded)."""
    entries = reader.next_batch(BATCH_SIZE)
    if not entries:
        return 0, Recording()
    reader.keep_awake()
    with transaction() as session:
        result = write_entries(session, entries, value_decimals=value_decimals)
    reader.acknowledge(entries, result.event_ids)
    return len(entries), result


def write_entries(session: orm.Session, entries: list[intake.Entry], *, value_decimals: int) -> Recording:
    """Write the rows of a batch as read from the intake (unreadable entries are kept as rejected)."""
    events, rejections = [], {}
    for entry in entries:
        try:
            events.append(AcceptedUsageEvent.from_message(entry.message or ""))
        except pydantic.ValidationError as error:
            # Should never happen (the edge wrote it); keep it, named by its stream entry.
            rejections[rejected_events.entry_key(entry)] = Rejection.of_entry(entry, f"Unreadable queue message: {error}")
    result = write_rows(session, events, value_decimals=value_decimals, rejections=rejections)
    result.event_ids = [event.id for event in events]
    return result


def write_rows(
    session: orm.Session,
    events: list[AcceptedUsageEvent],
    *,
    value_decimals: int,
    rejections: dict[uuid.UUID, Rejection] | None = None,
) -> Recording:
    """Cost the events and write their log rows in the session's transaction; keep those
    that cannot be billed as rejected."""
    rejections = dict(rejections or {})
    by_id = {event.id: event for event in events}
    catalog = _read_catalog(session, events)
    rows = _costed_rows(events, catalog, value_decimals, rejections)
    inserted = _insert(session, rows, by_id, rejections)
    _explain_not_inserted(session, [row for row in rows if row["id"] not in inserted], by_id, rejections)
    rejected_events.save(session, rejections, resolved=inserted)
    result = Recording(
        recorded=[row["id"] for row in rows if row["id"] in inserted],
        rejected={key: rejection.reason for key, rejection in rejections.items()},
        organizations={row["organization_id"] for row in rows if row["id"] in inserted},
    )
    for key, reason in result.rejected.items():
        log.warning("usage event not billable", extra={"event_id": str(key), "reason": reason})
    return result


def _read_catalog(session: orm.Session, events: list[AcceptedUsageEvent]) -> _Catalog:
    services = session.execute(
        sa.select(models.Service.name, models.Service.id).where(models.Service.name.in_({e.service_name for e in events}))
    )
    prices = session.scalars(
        sa.select(models.TextModelCost).where(models.TextModelCost.model_name.in_({e.model_name for e in events}))
    )
    user_ids = {e.user_id for e in events} | {e.caller_user_id for e in events}
    organization_ids = {e.organization_id for e in events}
    return _Catalog(
        services=dict(services.all()),
        prices=pricing.PriceBook([pricing.Price.from_row(row) for row in prices]),
        users=set(session.scalars(sa.select(models.User.id).where(models.User.id.in_(user_ids)))),
        organizations=set(
            session.scalars(sa.select(models.Organization.id).where(models.Organization.id.in_(organization_ids)))
        ),
    )


def _costed_rows(
    events: list[AcceptedUsageEvent], catalog: _Catalog, value_decimals: int, rejections: dict[uuid.UUID, Rejection]
) -> list[dict]:
    """The log rows of the billable events; a rejection for each of the others."""
    rows = []
    for event in events:
        price = catalog.prices.in_effect(event.model_name, event.occurred_at)
        reason = (
            f"Unknown service {event.service_name!r}." if event.service_name not in catalog.services
            else f"No price for model {event.model_name!r} in effect at {event.occurred_at.isoformat()}." if price is None
            else "Unknown user." if event.user_id not in catalog.users or event.caller_user_id not in catalog.users
            else "Unknown organization." if event.organization_id not in catalog.organizations
            else None
        )
        if reason:
            rejections[event.id] = Rejection.of_event(event, reason)
            continue
        try:
            rows.append(_row(event, price, catalog.services[event.service_name], value_decimals))
        except Exception as error:  # noqa: BLE001 - one event's arithmetic must not stop its batch
            rejections[event.id] = Rejection.of_event(event, f"Could not be priced: {error}.")
    return rows


def _row(event: AcceptedUsageEvent, price: pricing.Price, service_id: uuid.UUID, value_decimals: int) -> dict:
    costs = pricing.costs(price, event.input_tokens, event.output_tokens)
    return dict(
        id=event.id, user_id=event.user_id, organization_id=event.organization_id, service_id=service_id,
        agent_id=None, text_model_cost_id=price.id, model_name=event.model_name, input_tokens=event.input_tokens,
        output_tokens=event.output_tokens, service_cost=costs.service_cost, agent700_cost=costs.agent700_cost,
        source=event.source, occurred_at=event.occurred_at, received_at=event.received_at,
        caller_user_id=event.caller_user_id, idempotency_key=event.idempotency_key,
        idempotency_fingerprint=event.idempotency_fingerprint, status=usage_rows.INITIAL, stripe_identifier=str(event.id),
        stripe_value=pricing.stripe_value(costs.agent700_cost, value_decimals),
    )


# What a statement may raise for what it holds: PostgreSQL's refusals (wrapped by
# SQLAlchemy) and the driver's own before sending (psycopg2 raises a bare ValueError for
# NUL, a UnicodeEncodeError for a lone surrogate).
_STATEMENT_ERRORS = (sa.exc.StatementError, ValueError)


def _is_data_error(error: Exception) -> bool:
    """Refused for what it holds, not because the connection broke: retrying the same
    statement would fail the same way."""
    return not isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))


def _insert(
    session: orm.Session, rows: list[dict], events: dict[uuid.UUID, AcceptedUsageEvent], rejections: dict[uuid.UUID, Rejection]
) -> set[uuid.UUID]:
    """Insert the rows in one statement; if one of them cannot be stored, each on its own,
    keeping the ones refused. The ids actually inserted (not already there)."""
    if not rows:
        return set()
    # Given as parameter sets, not as .values(rows): SQLAlchemy compiles the statement once
    # and caches it, then sends the rows in batches ("insertmanyvalues"). Built from the
    # rows instead, the statement took more of a worker's time to compile than anything else.
    statement = insert(_logs).on_conflict_do_nothing().returning(_logs.c.id)
    try:
        with session.begin_nested():
            return set(session.scalars(statement, rows))
    except _STATEMENT_ERRORS as error:
        if not _is_data_error(error):
            raise
    inserted = set()
    for row in rows:
        try:
            with session.begin_nested():
                inserted |= set(session.scalars(statement, [row]))
        except _STATEMENT_ERRORS as error:
            if not _is_data_error(error):
                raise
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            rejections[row["id"]] = Rejection.of_event(events[row["id"]], f"Could not be stored: {reason}")
    return inserted


def _explain_not_inserted(
    session: orm.Session, rows: list[dict], events: dict[uuid.UUID, AcceptedUsageEvent], rejections: dict[uuid.UUID, Rejection]
) -> None:
    """A row not inserted is either a redelivery (its id is there: fine) or the same
    caller's Idempotency-Key on a second event (a retry the edge could not match, e.g.
    after its 24-hour window): kept as rejected, never billed twice."""
    if not rows:
        return
    existing = set(session.scalars(sa.select(_logs.c.id).where(_logs.c.id.in_([row["id"] for row in rows]))))
    by_key = [row for row in rows if row["id"] not in existing and row["id"] not in rejections]
    if not by_key:
        return
    pairs = [(row["caller_user_id"], row["idempotency_key"]) for row in by_key]
    originals = {
        (caller, key): original
        for original, caller, key in session.execute(
            sa.select(_logs.c.id, _logs.c.caller_user_id, _logs.c.idempotency_key).where(
                sa.tuple_(_logs.c.caller_user_id, _logs.c.idempotency_key).in_(pairs)
            )
        )
    }
    for row in by_key:
        original = originals.get((row["caller_user_id"], row["idempotency_key"]))
        rejections[row["id"]] = Rejection.of_event(
            events[row["id"]], f"Duplicate of event {original}: same caller and Idempotency-Key; billed once there."
        )


