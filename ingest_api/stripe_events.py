"""``POST /api/stripe/events``: Stripe's event destination for the meters' asynchronous
error reports.

The v2 meter event stream validates events after it has answered: an event Stripe
drops later (no meter, an unknown customer, a bad timestamp or value) is reported only
through ``v1.billing.meter.error_report_triggered`` or ``v1.billing.meter.no_meter_found``.
This endpoint takes those thin events: it verifies their signature with the Stripe SDK
(``STRIPE_WEBHOOK_SECRET``), records each event id once, and hands it to the worker
(``billing.stripe_event``), which finds the rows Stripe does not have and marks them
failed with Stripe's reason. It answers fast and never does that work itself.

A bad signature (a forgery, an old replay outside Stripe's 5-minute tolerance, another
destination's secret) is a 400 and nothing is written; so is a signed body that is not a
thin event (not a JSON object, no string ``id`` or ``type``, another ``object``). A
delivery of an event already received is a 200 and changes nothing. The worker's task
chain holds a lease on the event (``shared.queue.start_stripe_event``): one chain per event.
"""

from __future__ import annotations

import json
import logging
import re

import stripe
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.dialects.postgresql import insert

from ingest_api.errors import ApiError
from shared import db, models, queue, stripe_meter

blueprint = Blueprint("stripe_events", __name__)
log = logging.getLogger(__name__)
# The events that can mean a reported row was dropped; any other (a destination ping)
# is acknowledged and ignored.
HANDLED_TYPES = frozenset(stripe_meter.ERROR_REPORT_TYPES)
# Stripe's ids are letters, digits and underscores (evt_test_...); the worker puts the id in
# a URL path, so nothing else is taken.
EVENT_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
NOT_AN_EVENT = (
    "The body is not a Stripe thin event (a JSON object with a string id and type, object "
    "v2.core.event); nothing was recorded."
)


@blueprint.post("/api/stripe/events")
def receive_stripe_event():
    settings = current_app.config["SETTINGS"]
    if not settings.stripe_webhook_secret:
        raise ApiError(
            503, "This service has no STRIPE_WEBHOOK_SECRET, so it cannot verify Stripe's events.",
            headers={"Retry-After": "60"},
        )
    body = request.get_data()
    try:
        stripe.WebhookSignature.verify_header(
            body, request.headers.get("Stripe-Signature"), settings.stripe_webhook_secret,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,  # without one, any old replay would verify
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        raise ApiError(400, "The Stripe-Signature header does not verify this body; nothing was recorded.") from None
    event_id, event_type = _thin_event(body)
    if event_type not in HANDLED_TYPES:
        return jsonify(received=True, handled=False)
    with db.transaction(settings.database_url) as session:
        new = session.execute(
            insert(models.StripeEvent)
            .values(id=event_id, type=event_type)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(models.StripeEvent.id)
        ).first()
    if new is not None:
        # If this send is lost, the sweep sends it again (the event stays unhandled).
        queue.start_stripe_event(current_app.extensions["intake"].redis, event_id)
        log.info("stripe event received", extra={"stripe_event_id": event_id, "type": event_type})
    return jsonify(received=True, handled=True)


def _thin_event(body: bytes) -> tuple[str, str]:
    """The id and type of a signed body, or a 400 if it is not a thin event (the SDK's
    parser fails with AttributeError on a JSON array or string)."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, NOT_AN_EVENT) from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str) and EVENT_ID.fullmatch(event["id"])
        and isinstance(event.get("type"), str) and event["type"]
        and event.get("object") == "v2.core.event"
    ):
        raise ApiError(400, NOT_AN_EVENT)
    return event["id"], event["type"]
