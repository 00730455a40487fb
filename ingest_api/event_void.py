"""Voiding one usage event (``POST .../{id}/void``): the answer of each case, as the
contract has it. What a void is and does is ``shared.usage_voids``'s; Stripe's side is the
shard reporter's (``worker.voiding``), woken here."""

from __future__ import annotations

import uuid

import redis

from ingest_api.errors import ApiError
from ingest_api.event_status import event_status
from shared import db, models, queue, usage_voids
from shared.intake import Intake, QueueUnavailable
from shared.models import VoidState

# A queued event is recorded within a second or two when the pipeline is healthy.
QUEUED_RETRY_AFTER_SECONDS = "2"


def void_event(intake: Intake, database_url: str, event_id: uuid.UUID, reason: str, requested_by: str) -> tuple[int, dict]:
    """(HTTP status, status record) of voiding the event; ``ApiError`` for a refusal."""
    voided = _void_row(database_url, event_id, reason, requested_by)
    if voided is None:
        _refuse_queued(intake, event_id)
        # Not queued (any more): the recorder commits an event's row, or its rejection,
        # before it deletes the queued copy, so an event recorded while the database was
        # looked at is there now.
        voided = _void_row(database_url, event_id, reason, requested_by)
    if voided is None:
        raise ApiError(404, "No usage event with this id.")
    done, needs_reporter, organization_id = voided
    if not done and needs_reporter:
        try:
            queue.wake_reporters(intake.redis, [queue.shard_of(organization_id)])
        except redis.RedisError:
            pass  # the beat sweep wakes the shard of a due void
    return (200 if done else 202), event_status(intake, database_url, event_id)


def _void_row(database_url: str, event_id: uuid.UUID, reason: str, requested_by: str) -> tuple[bool, bool, uuid.UUID] | None:
    """(complete, needs the reporter, organization) of voiding the event's row; None if it
    has no row (yet); ``ApiError`` if it cannot be voided."""
    with db.transaction(database_url) as session:
        try:
            void = usage_voids.request(session, event_id, reason, requested_by)
        except usage_voids.VoidRefused as refused:
            raise ApiError(409, str(refused)) from None
        if void is None:
            if session.get(models.RejectedUsageEvent, event_id) is not None:
                raise ApiError(409, "The recorder refused this event, so nothing of it was billed: there is nothing to void.")
            return None
        organization_id = session.get(models.UserBillableRequestLog, event_id).organization_id
        return void.state == VoidState.COMPLETED, void.method in usage_voids.STRIPE_METHODS, organization_id


def _refuse_queued(intake: Intake, event_id: uuid.UUID) -> None:
    try:
        queued = intake.queued_event(event_id) is not None
    except QueueUnavailable:
        raise ApiError(503, "The billing queue is unavailable, so this event cannot be found. Retry later.",
                       headers={"Retry-After": QUEUED_RETRY_AFTER_SECONDS}) from None
    if queued:
        raise ApiError(409, "This event is still queued: void it once it is recorded.",
                       headers={"Retry-After": QUEUED_RETRY_AFTER_SECONDS})
