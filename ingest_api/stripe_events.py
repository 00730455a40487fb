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
destination's secret) is a 400 and nothing is written. A delivery of an event already
received is a 200 and changes nothing.
"""

from __future__ import annotations

import logging

import stripe
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.dialects.postgresql import insert

from ingest_api.errors import ApiError
from shared import db, models, queue

blueprint = Blueprint("stripe_events", __name__)
log = logging.getLogger(__name__)
# The events that can mean a reported row was dropped; any other (a destination ping)
# is acknowledged and ignored.
HANDLED_TYPES = frozenset({"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"})


@blueprint.post("/api/stripe/events")
def receive_stripe_event():
    settings = current_app.config["SETTINGS"]
    if not settings.stripe_webhook_secret:
        raise ApiError(
            503, "This service has no STRIPE_WEBHOOK_SECRET, so it cannot verify Stripe's events.",
            headers={"Retry-After": "60"},
        )
    client = stripe.StripeClient(settings.stripe_api_key)
    try:
        notification = client.parse_event_notification(
            request.get_data(), request.headers.get("Stripe-Signature"), settings.stripe_webhook_secret
        )
    except stripe.SignatureVerificationError:
        raise ApiError(400, "The Stripe-Signature header does not verify this body; nothing was recorded.") from None
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "The body is not a Stripe event; nothing was recorded.") from None
    if notification.type not in HANDLED_TYPES:
        return jsonify(received=True, handled=False)
    with db.transaction(settings.database_url) as session:
        new = session.execute(
            insert(models.StripeEvent)
            .values(id=notification.id, type=notification.type)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(models.StripeEvent.id)
        ).first()
    if new is not None:
        # If this send is lost, the sweep sends it again (the event stays unhandled).
        queue.send(queue.STRIPE_EVENT, notification.id)
        log.info("stripe event received", extra={"stripe_event_id": notification.id, "type": notification.type})
    return jsonify(received=True, handled=True)
