"""One usage event's status record (``UsageEventOut``), as GET .../{id} answers it.

An accepted event is read from its log row, or from its rejected event if the recorder
refused it, and from its queued copy in the intake while no recorder has written either.
The answer is the status record as JSON; the route (``ingest_api.usage``) turns "no such
event" and "the intake did not answer" into HTTP answers.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from ingest_api.schemas import UsageEventOut
from shared import db, models, usage_voids
from shared.intake import Intake, QueueUnavailable
from shared.usage_event import AcceptedUsageEvent


def event_status(intake: Intake, database_url: str, event_id: uuid.UUID) -> dict | None:
    """The event's status record, or None if there is no such event.

    Raises ``QueueUnavailable`` if the intake did not answer and the database has no row
    of the event: an accepted event no worker has recorded is only in the intake.
    """
    # The database first: once the row (or the rejection) is written it is the event's
    # state, even while its queued copy is still there (the recorder deletes the copy after
    # its commit, and a broker outage in between leaves it until the entry is recorded
    # again: read first, the copy made a recorded, even voided, event look queued).
    recorded = _from_database(database_url, event_id)
    if recorded is not None:
        return recorded
    try:
        queued, intake_error = intake.queued_event(event_id), None
    except QueueUnavailable as error:
        # Not "unknown" yet: the database may have the event.
        queued, intake_error = None, error
    if queued is not None:
        return _usage_event_out(queued, "queued", None, None, None, None, None)
    # Not queued (any more): a worker that recorded the event since the first look
    # committed its row before it deleted the queued copy, so the row is visible now.
    recorded = _from_database(database_url, event_id)
    if recorded is None and intake_error is not None:
        raise intake_error
    return recorded


def _from_database(database_url: str, event_id: uuid.UUID) -> dict | None:
    """The status record from the event's log row, else from its rejected event."""
    with db.transaction(database_url) as session:
        row = session.execute(
            sa.select(models.UserBillableRequestLog, models.Service.name)
            .outerjoin(models.Service, models.Service.id == models.UserBillableRequestLog.service_id)
            .where(models.UserBillableRequestLog.id == event_id)
        ).first()
        if row is not None:
            log, service_name = row
            event = AcceptedUsageEvent(
                id=log.id, user_id=log.user_id, organization_id=log.organization_id, service_name=service_name,
                model_name=log.model_name, input_tokens=log.input_tokens, output_tokens=log.output_tokens,
                source=log.source, occurred_at=log.occurred_at, received_at=log.received_at,
                caller_user_id=log.caller_user_id, idempotency_key=log.idempotency_key,
            )
            return _usage_event_out(
                event, log.status, log.service_cost, log.agent700_cost, log.stripe_value,
                log.stripe_reported_at, log.error, usage_voids.as_record(session.get(models.UsageVoid, log.id)),
            )
        rejected = session.get(models.RejectedUsageEvent, event_id)
        if rejected is not None:
            event = AcceptedUsageEvent.model_validate(rejected.payload)
            return _usage_event_out(event, "failed", None, None, None, None, rejected.reason)
    return None


def _usage_event_out(
    event: AcceptedUsageEvent, status, service_cost, agent700_cost, stripe_value, reported_at, error, void=None
) -> dict:
    answer = UsageEventOut(
        **event.model_dump(include=set(UsageEventOut.model_fields)),
        status=status,
        service_cost=_decimal_string(service_cost),
        agent700_cost=_decimal_string(agent700_cost),
        stripe={"identifier": str(event.id), "value": stripe_value, "reported_at": reported_at},
        error=error,
        void=void,
    )
    return answer.model_dump(mode="json")


def _decimal_string(amount) -> str | None:
    # Fixed-point always: str(Decimal) switches to exponent notation for small amounts
    # ("1.50000000000E-7", "0E-18"), which is not the contract's decimal string.
    return None if amount is None else format(amount, "f")
