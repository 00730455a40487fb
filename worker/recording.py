"""Recording: from the intake stream to exactly one ``user_billable_request_logs`` row per event.

A batch of stream entries is costed and written in one transaction with
``INSERT ... ON CONFLICT DO NOTHING``: a redelivered entry, a retried task or two workers
racing on the same entry can never make a second row. Entries are acknowledged (and
deleted from the stream) only after that commit, so a worker killed at any point loses
nothing: its pending entries are claimed by another consumer after ``CLAIM_IDLE_MS``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field

import pydantic
import redis
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared import db, intake, metrics, models
from shared.config import Settings
from shared.usage_event import AcceptedUsageEvent
from worker import pricing

log = logging.getLogger(__name__)
BATCH_SIZE = 500


@dataclass
class BatchResult:
    recorded: list[uuid.UUID] = field(default_factory=list)
    rejected: dict[uuid.UUID, str] = field(default_factory=dict)
    organizations: set[uuid.UUID] = field(default_factory=set)  # of newly recorded rows


def consumer_name() -> str:
    """This process's name in the consumer group: its pending entries are its own."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(broker: redis.Redis) -> None:
    try:
        # From "0": entries appended before the group existed are billed too.
        broker.xgroup_create(intake.STREAM, intake.GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


class IntakeReader:
    """Reads batches for one consumer: first its own unacknowledged entries (a retry after
    a failed commit), then entries stranded by dead consumers, then new ones."""

    def __init__(self, broker: redis.Redis, consumer: str):
        self.broker = broker
        self.consumer = consumer
        self._own_pending_done = False
        self._claimed_stale = False

    def next_batch(self, count: int = BATCH_SIZE) -> list[tuple[str, dict]]:
        if not self._own_pending_done:
            entries = self._read("0", count)
            if entries:
                return entries
            self._own_pending_done = True
        if not self._claimed_stale:
            self._claimed_stale = True
            _, entries, *_ = self.broker.xautoclaim(
                intake.STREAM, intake.GROUP, self.consumer, intake.CLAIM_IDLE_MS, "0-0", count=count
            )
            if entries:
                return [(entry_id, fields) for entry_id, fields in entries if fields]
        return self._read(">", count)

    def _read(self, start: str, count: int) -> list[tuple[str, dict]]:
        response = self.broker.xreadgroup(intake.GROUP, self.consumer, {intake.STREAM: start}, count=count)
        if not response:
            return []
        _, entries = response[0]
        stale = [entry_id for entry_id, fields in entries if not fields]  # deleted after an ack elsewhere
        if stale:
            self.broker.xack(intake.STREAM, intake.GROUP, *stale)
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def done(self, entries: list[tuple[str, dict]], event_ids: list[uuid.UUID]) -> None:
        """Acknowledge committed entries, drop them from the stream, clear their queued records."""
        if not entries:
            return
        ids = [entry_id for entry_id, _ in entries]
        with self.broker.pipeline(transaction=True) as pipe:
            pipe.xack(intake.STREAM, intake.GROUP, *ids)
            pipe.xdel(intake.STREAM, *ids)
            if event_ids:
                pipe.delete(*(intake.QUEUED_KEY.format(event_id=event_id) for event_id in event_ids))
            pipe.execute()


def parse_entries(entries: list[tuple[str, dict]]) -> tuple[list[AcceptedUsageEvent], dict[uuid.UUID, tuple[dict, str]]]:
    events, unreadable = [], {}
    for entry_id, fields in entries:
        message = fields.get(intake.EVENT_FIELD, "")
        try:
            events.append(AcceptedUsageEvent.from_message(message))
        except pydantic.ValidationError as error:
            # Should never happen (the edge wrote it); keep it, named by its stream entry.
            key = uuid.uuid5(uuid.NAMESPACE_URL, f"{intake.STREAM}/{entry_id}")
            unreadable[key] = ({"stream_entry": entry_id, "message": message}, f"Unreadable queue message: {error}")
    return events, unreadable


def record(settings: Settings, events: list[AcceptedUsageEvent], unreadable: dict | None = None) -> BatchResult:
    """Cost and write the events in one transaction; keep the ones that cannot be billed."""
    result = BatchResult()
    rejected_payloads: dict[uuid.UUID, tuple[dict, str]] = dict(unreadable or {})
    with db.transaction(settings.database_url) as session:
        services = dict(
            session.execute(
                sa.select(models.Service.name, models.Service.id).where(
                    models.Service.name.in_({e.service_name for e in events})
                )
            ).all()
        )
        price_book = pricing.PriceBook(
            [
                pricing.Price(
                    row.id, row.model_name, row.effective_from, row.input_cost_per_token,
                    row.output_cost_per_token, row.agent700_input_cost_per_token, row.agent700_output_cost_per_token,
                )
                for row in session.scalars(
                    sa.select(models.TextModelCost).where(
                        models.TextModelCost.model_name.in_({e.model_name for e in events})
                    )
                )
            ]
        )
        user_ids = {e.user_id for e in events} | {e.caller_user_id for e in events}
        users = set(session.scalars(sa.select(models.User.id).where(models.User.id.in_(user_ids))))
        organizations = set(
            session.scalars(
                sa.select(models.Organization.id).where(models.Organization.id.in_({e.organization_id for e in events}))
            )
        )

        rows = []
        for event in events:
            price = price_book.in_effect(event.model_name, event.occurred_at)
            reason = (
                f"Unknown service {event.service_name!r}." if event.service_name not in services
                else f"No price for model {event.model_name!r} in effect at {event.occurred_at.isoformat()}." if price is None
                else "Unknown user." if event.user_id not in users or event.caller_user_id not in users
                else "Unknown organization." if event.organization_id not in organizations
                else None
            )
            if reason:
                rejected_payloads[event.id] = (event.model_dump(mode="json"), reason)
                continue
            costs = pricing.costs(price, event.input_tokens, event.output_tokens)
            rows.append(
                dict(
                    id=event.id, user_id=event.user_id, organization_id=event.organization_id,
                    service_id=services[event.service_name], agent_id=None, text_model_cost_id=price.id,
                    model_name=event.model_name, input_tokens=event.input_tokens, output_tokens=event.output_tokens,
                    service_cost=costs.service_cost, agent700_cost=costs.agent700_cost, source=event.source,
                    occurred_at=event.occurred_at, received_at=event.received_at,
                    caller_user_id=event.caller_user_id, idempotency_key=event.idempotency_key,
                    status=models.UsageStatus.RECORDED, stripe_identifier=str(event.id),
                    stripe_value=pricing.stripe_value(costs.agent700_cost, settings.stripe_value_decimals),
                )
            )

        logs = models.UserBillableRequestLog.__table__
        inserted: set[uuid.UUID] = set()
        if rows:
            inserted = set(
                session.scalars(insert(logs).values(rows).on_conflict_do_nothing().returning(logs.c.id))
            )
        not_inserted = [row for row in rows if row["id"] not in inserted]
        if not_inserted:
            # Either a redelivery (the row is there: fine) or the same caller's
            # Idempotency-Key on a second event (a retry the edge could not match,
            # e.g. after its 24-hour window): never bill it twice.
            existing = set(session.scalars(sa.select(logs.c.id).where(logs.c.id.in_([r["id"] for r in not_inserted]))))
            for row in not_inserted:
                if row["id"] not in existing:
                    original = session.scalar(
                        sa.select(logs.c.id).where(
                            logs.c.caller_user_id == row["caller_user_id"], logs.c.idempotency_key == row["idempotency_key"]
                        )
                    )
                    event = next(e for e in events if e.id == row["id"])
                    rejected_payloads[row["id"]] = (
                        event.model_dump(mode="json"),
                        f"Duplicate of event {original}: same caller and Idempotency-Key; billed once there.",
                    )
        if inserted:
            session.execute(
                sa.update(models.RejectedUsageEvent)
                .where(models.RejectedUsageEvent.id.in_(inserted))
                .values(resolved_at=sa.func.now())
            )
        if rejected_payloads:
            table = models.RejectedUsageEvent.__table__
            statement = insert(table).values(
                [{"id": key, "payload": payload, "reason": reason} for key, (payload, reason) in rejected_payloads.items()]
            )
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[table.c.id],
                    set_={
                        "reason": statement.excluded.reason,
                        "attempts": table.c.attempts + 1,
                        "rejected_at": sa.func.now(),
                        "resolved_at": None,
                    },
                )
            )
    result.recorded = [row["id"] for row in rows if row["id"] in inserted]
    result.organizations = {row["organization_id"] for row in rows if row["id"] in inserted}
    result.rejected = {key: reason for key, (_, reason) in rejected_payloads.items()}
    for key, reason in result.rejected.items():
        log.warning("usage event not billable", extra={"event_id": str(key), "reason": reason})
    return result


def drain(settings: Settings, broker: redis.Redis, *, deadline: float, clock) -> BatchResult:
    """Record batches until the stream has nothing for us or the deadline passes."""
    ensure_group(broker)
    reader = IntakeReader(broker, consumer_name())
    total = BatchResult()
    while clock() < deadline:
        entries = reader.next_batch()
        if not entries:
            break
        events, unreadable = parse_entries(entries)
        result = record(settings, events, unreadable)
        reader.done(entries, [e.id for e in events])
        metrics.events_recorded.inc(len(result.recorded))
        metrics.events_rejected.inc(len(result.rejected))
        if result.recorded:
            log.info("usage events recorded", extra={"event_ids": [str(i) for i in result.recorded]})
        total.recorded += result.recorded
        total.rejected |= result.rejected
        total.organizations |= result.organizations
    return total
