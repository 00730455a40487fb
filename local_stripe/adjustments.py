"""Meter event adjustments: cancel one meter event received within the last 24 h.

* ``POST /v1/billing/meter_event_adjustments`` (form, secret key): ``event_name``,
  ``type=cancel``, ``cancel[identifier]``; answers a ``billing.meter_event_adjustment``.
* ``POST /v2/billing/meter_event_adjustments`` (JSON, secret key: the SDK sends it to the
  "api" base address, not the session-token stream's); answers a
  ``v2.billing.meter_event_adjustment``.

Both answer ``status: "pending"``: the canceled event leaves its meter's summaries after
the summary lag, as the cancellation is processed asynchronously at Stripe. An unknown
identifier, another event name, or an event received 24 h ago or more (by the clock)
answers 400 ``resource_missing``; an event already canceled answers 400 (v2:
``already_canceled``, the error type the SDK maps to ``AlreadyCanceledError``).
Idempotency as for every call (``pipeline.py``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from local_stripe.pipeline import current_state, executing, stripe_api
from local_stripe.wire import StripeError, missing, new_id, rfc3339

bp = Blueprint("local_stripe_adjustments", __name__)


def _checked(params: dict[str, Any], identifier_param: str) -> tuple[str, str]:
    """(event_name, identifier), the parameters checked; ``identifier_param`` is how the
    API version names ``cancel.identifier``."""
    event_name = params.get("event_name")
    if not event_name:
        raise missing("event_name")
    if not isinstance(event_name, str):
        raise StripeError(400, "Invalid event_name: must be a string.", param="event_name")
    if not params.get("type"):
        raise missing("type")
    if params["type"] != "cancel":
        raise StripeError(400, "Invalid type: must be cancel.", param="type")
    cancel = params.get("cancel")
    if not isinstance(cancel, dict) or not cancel.get("identifier"):
        raise missing(identifier_param)
    for unknown in sorted(set(cancel) - {"identifier"}):
        param = identifier_param.replace("identifier", unknown)
        raise StripeError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)
    if not isinstance(cancel["identifier"], str):
        raise StripeError(400, f"Invalid {identifier_param}: must be a string.", param=identifier_param)
    return event_name, cancel["identifier"]


def _cancel(params: dict[str, Any], *, v2: bool) -> tuple[str, str]:
    """Check the parameters and cancel the event; (event_name, identifier)."""
    identifier_param = "cancel.identifier" if v2 else "cancel[identifier]"
    event_name, identifier = _checked(params, identifier_param)
    executing()
    store = current_state().store
    if store.cancel(event_name, identifier) is not None:
        return event_name, identifier
    if store.canceled(event_name, identifier):
        raise StripeError(
            400,
            f"The meter event with identifier {identifier} is already canceled.",
            type="already_canceled" if v2 else "invalid_request_error",
            param=identifier_param,
        )
    raise StripeError(
        400,
        f"No meter event with identifier {identifier} for event_name {event_name!r} was received in the last "
        "24 hours; only those can be canceled.",
        code="resource_missing",
        param=identifier_param,
    )


@bp.post("/v1/billing/meter_event_adjustments")
@stripe_api("secret", accepts=("event_name", "type", "cancel", "expand"))
def create_v1_adjustment(params: dict[str, Any]) -> dict[str, Any]:
    event_name, identifier = _cancel(params, v2=False)
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }


@bp.post("/v2/billing/meter_event_adjustments")
@stripe_api("secret", accepts=("event_name", "type", "cancel"))
def create_v2_adjustment(params: dict[str, Any]) -> dict[str, Any]:
    event_name, identifier = _cancel(params, v2=True)
    return {
        "id": new_id("mtradj_test"),
        "object": "v2.billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "created": rfc3339(current_state().clock.now()),
        "event_name": event_name,
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }
