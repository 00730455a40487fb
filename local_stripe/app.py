"""The local Stripe server's Flask application: Billing Meters over Stripe's wire protocol.

Stripe routes (the real ``stripe`` SDK works against them unchanged; point both the
"api" and the "meter_events" base addresses here):

* ``POST /v1/billing/meter_events`` - synchronous meter event (form-encoded, secret key).
* ``POST /v2/billing/meter_event_session`` - session with a short-lived token (JSON).
* ``POST /v2/billing/meter_event_stream`` - up to 100 events (JSON, session token).
* ``POST /v1/billing/meters``, ``GET /v1/billing/meters[?status=]``,
  ``GET /v1/billing/meters/{id}``, ``POST /v1/billing/meters/{id}/deactivate|reactivate``,
  ``GET /v1/billing/meters/{id}/event_summaries``.

Local routes (not Stripe; see ``faults.py`` for the settings):
``GET /_local/meter_events``, ``POST /_local/reset``, ``GET|POST /_local/faults``.

Every Stripe call runs: injected failure -> authentication -> idempotency key -> endpoint
-> injected latency (taken once; meter-event endpoints take it inside their customer
claims). Every answer carries a ``Request-Id`` header.

Where this server knowingly differs from Stripe (so tests stay simple and deterministic):

* Meter events are validated synchronously, v2 stream included: a bad event refuses the
  whole stream call with 400 and nothing is stored. Stripe accepts v2 events and reports
  invalid ones later (``v1.billing.meter.error_report_triggered``); the error codes used
  here are that report's (``meter_event_no_customer_defined``, ``meter_event_value_not_numeric``,
  ``timestamp_too_far_in_past``, ``timestamp_in_future``, ``archived_meter``).
* Identifiers are unique across v1 and v2 for the server's lifetime (Stripe: a rolling
  24 h at least). v1: a known identifier answers 400 ``resource_already_exists``. v2:
  an event whose identifier is known (from an earlier call or earlier in the same
  call) is dropped silently and never counted twice; the call still answers ``{}``.
* The first event for an ``event_name`` without a meter creates a sum meter for it
  (Stripe would drop such events and report ``no_meter``).
* Summaries are computed at once (Stripe: eventually consistent). With a grouping window
  only windows that have events are listed, newest first.
* Idempotency keys are one global namespace and never expire; an answer is stored for
  replay only once the endpoint ran (success, or ``resource_already_exists``), never for
  validation errors, injected faults, or 429s, so a retry runs the request again.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request

from local_stripe.events import parse_event, v1_name, v2_namer
from local_stripe.pipeline import answer, current_state, customer_calls, request_params, stripe_api
from local_stripe.state import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, LocalStripe, new_meter
from local_stripe.wire import StripeError, missing, new_id, reject_unknown, rfc3339

MAX_STREAM_EVENTS = 100
WINDOWS = {"hour": 3600, "day": 86400}
FORMULAS = ("count", "last", "sum")

bp = Blueprint("local_stripe", __name__)


def state_of(app: Flask) -> LocalStripe:
    """The server state behind ``app`` (for tests: no HTTP needed)."""
    return app.extensions["local_stripe"]


def create_app() -> Flask:
    app = Flask(__name__)
    app.extensions["local_stripe"] = LocalStripe()
    app.register_blueprint(bp)
    return app


@bp.before_app_request
def _assign_request_id() -> None:
    g.request_id = new_id("req")


@bp.after_app_request
def _add_request_id(response: Response) -> Response:
    response.headers["Request-Id"] = g.get("request_id", "")
    if "Stripe-Version" in request.headers:
        response.headers["Stripe-Version"] = request.headers["Stripe-Version"]
    return response


# -- meter events -------------------------------------------------------------------------


@bp.post("/v1/billing/meter_events")
@stripe_api("secret")
def create_meter_event() -> dict[str, Any]:
    params = request_params()
    reject_unknown(params, ("event_name", "payload", "identifier", "timestamp", "expand"))
    event = parse_event(params, via="v1", name=v1_name, now=time.time(), meter_for=current_state().store.meter_for)
    with customer_calls([(event.customer, event.event_name)]):
        current_state().store.record([event], duplicates="reject")
    return event.v1_object()


@bp.post("/v2/billing/meter_event_session")
@stripe_api("secret")
def create_meter_event_session() -> dict[str, Any]:
    reject_unknown(request_params(), ())
    now = time.time()
    expires_at = now + current_state().faults.session_ttl_seconds
    token = f"mes_tok_{secrets.token_urlsafe(24)}"
    current_state().store.add_session(token, expires_at)
    return {
        "id": new_id("mes"),
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": rfc3339(now),
        "expires_at": rfc3339(expires_at),
        "livemode": False,
    }


@bp.post("/v2/billing/meter_event_stream")
@stripe_api("session")
def create_meter_event_stream() -> dict[str, Any]:
    params = request_params()
    reject_unknown(params, ("events",))
    events = params.get("events")
    if events is None:
        raise missing("events")
    if not isinstance(events, list) or not events:
        raise StripeError(400, "Invalid events: must be a non-empty array.", param="events")
    if len(events) > MAX_STREAM_EVENTS:
        raise StripeError(
            400,
            f"Invalid events: {len(events)} events given; a request supports up to {MAX_STREAM_EVENTS}.",
            param="events",
        )
    now = time.time()
    parsed = []
    for index, raw in enumerate(events):
        prefix = f"events[{index}]"
        if not isinstance(raw, dict):
            raise StripeError(400, f"Invalid {prefix}: must be an object.", param=prefix)
        reject_unknown(raw, ("event_name", "payload", "identifier", "timestamp"), prefix=f"{prefix}.")
        parsed.append(
            parse_event(raw, via="v2", name=v2_namer(prefix), now=now, meter_for=current_state().store.meter_for)
        )
    with customer_calls({(event.customer, event.event_name) for event in parsed}):
        current_state().store.record(parsed, duplicates="skip")
    return {}


# -- meters ---------------------------------------------------------------------------


def _object_param(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name, {})
    if not isinstance(value, dict):
        raise StripeError(400, "Invalid object", param=name)
    return value


def _int_param(params: dict[str, Any], name: str, default: int | None = None) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        if default is None:
            raise missing(name)
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name) from None


def _meter_or_404(meter: dict[str, Any] | None, meter_id: str) -> dict[str, Any]:
    if meter is None:
        raise StripeError(404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id")
    return meter


def _page(items: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    """A Stripe list object: ``limit`` (1-100, default 10), ``starting_after``, ``ending_before``."""
    limit = _int_param(params, "limit", default=10)
    if not 1 <= limit <= 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    ids = [item["id"] for item in items]
    for cursor in ("starting_after", "ending_before"):
        if params.get(cursor) and params[cursor] not in ids:
            raise StripeError(400, f"No such object: '{params[cursor]}'", code="resource_missing", param=cursor)
    if params.get("starting_after"):
        rest = items[ids.index(params["starting_after"]) + 1 :]
        page, has_more = rest[:limit], len(rest) > limit
    elif params.get("ending_before"):
        rest = items[: ids.index(params["ending_before"])]
        page, has_more = rest[-limit:], len(rest) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


@bp.post("/v1/billing/meters")
@stripe_api("secret")
def create_meter() -> dict[str, Any]:
    params = request_params()
    reject_unknown(
        params,
        (
            "display_name",
            "event_name",
            "default_aggregation",
            "customer_mapping",
            "value_settings",
            "event_time_window",
            "expand",
        ),
    )
    for required in ("display_name", "event_name"):
        if not params.get(required):
            raise missing(required)
    formula = _object_param(params, "default_aggregation").get("formula")
    if not formula:
        raise missing("default_aggregation[formula]")
    if formula not in FORMULAS:
        raise StripeError(
            400,
            f"Invalid default_aggregation[formula]: must be one of {', '.join(FORMULAS)}",
            param="default_aggregation[formula]",
        )
    mapping = _object_param(params, "customer_mapping")
    if mapping and mapping.get("type") != "by_id":
        raise StripeError(400, "Invalid customer_mapping[type]: must be by_id", param="customer_mapping[type]")
    window = params.get("event_time_window") or None
    if window not in (None, *WINDOWS):
        raise StripeError(400, "Invalid event_time_window: must be one of day, hour", param="event_time_window")
    meter = new_meter(
        params["event_name"],
        display_name=params["display_name"],
        formula=formula,
        customer_key=mapping.get("event_payload_key") or DEFAULT_CUSTOMER_KEY,
        value_key=_object_param(params, "value_settings").get("event_payload_key") or DEFAULT_VALUE_KEY,
        event_time_window=window,
    )
    return current_state().store.add_meter(meter)


@bp.get("/v1/billing/meters")
@stripe_api("secret")
def list_meters() -> dict[str, Any]:
    params = request_params()
    status = params.get("status") or None
    if status not in (None, "active", "inactive"):
        raise StripeError(400, "Invalid status: must be one of active, inactive", param="status")
    return _page(current_state().store.meters(status), params, "/v1/billing/meters")


@bp.get("/v1/billing/meters/<meter_id>")
@stripe_api("secret")
def retrieve_meter(meter_id: str) -> dict[str, Any]:
    return _meter_or_404(current_state().store.meter(meter_id), meter_id)


@bp.post("/v1/billing/meters/<meter_id>/deactivate", defaults={"status": "inactive"})
@bp.post("/v1/billing/meters/<meter_id>/reactivate", defaults={"status": "active"})
@stripe_api("secret")
def change_meter_status(meter_id: str, status: str) -> dict[str, Any]:
    return _meter_or_404(current_state().store.set_meter_status(meter_id, status), meter_id)


@bp.get("/v1/billing/meters/<meter_id>/event_summaries")
@stripe_api("secret")
def list_event_summaries(meter_id: str) -> dict[str, Any]:
    meter = _meter_or_404(current_state().store.meter(meter_id), meter_id)
    params = request_params()
    reject_unknown(
        params,
        ("customer", "start_time", "end_time", "value_grouping_window")
        + ("limit", "starting_after", "ending_before", "expand"),
    )
    customer = params.get("customer")
    if not customer:
        raise missing("customer")
    start, end = _int_param(params, "start_time"), _int_param(params, "end_time")
    for param, value in (("start_time", start), ("end_time", end)):
        if value % 60:
            raise StripeError(400, f"Invalid {param}: must be aligned with minute boundaries.", param=param)
    if end <= start:
        raise StripeError(400, "Invalid end_time: must be after start_time.", param="end_time")
    window = params.get("value_grouping_window") or None
    if window not in (None, *WINDOWS):
        raise StripeError(400, "Invalid value_grouping_window: must be one of day, hour", param="value_grouping_window")
    summaries = current_state().store.summarize(meter, customer, start, end, WINDOWS.get(window) if window else None)
    return _page(summaries, params, f"/v1/billing/meters/{meter_id}/event_summaries")


# -- errors outside the endpoints -------------------------------------------------------


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _unrecognized_url(error: Exception) -> Response:
    return answer(
        StripeError(
            404,
            f"Unrecognized request URL ({request.method}: {request.path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        ).body(),
        404,
    )


@bp.app_errorhandler(500)
def _internal_error(error: Exception) -> Response:
    return answer(StripeError(500, "An unknown error occurred.", type="api_error").body(), 500)


# -- local inspection and fault injection (not Stripe) --------------------------------------


@bp.get("/_local/meter_events")
def local_meter_events() -> dict[str, Any]:
    """Every accepted meter event, oldest first."""
    return {"object": "list", "data": [event.listing() for event in current_state().store.events()]}


@bp.post("/_local/reset")
def local_reset() -> dict[str, Any]:
    """Forget events, meters, sessions, idempotency keys; faults back to defaults."""
    current_state().reset()
    return {"reset": True}


@bp.get("/_local/faults")
def local_faults() -> dict[str, Any]:
    return current_state().faults.snapshot()


@bp.post("/_local/faults")
def local_set_faults() -> Response | dict[str, Any]:
    """Change some settings (JSON object); answers all settings, or 400 naming the bad one."""
    changes = request.get_json(silent=True)
    if not isinstance(changes, dict):
        return answer({"error": {"type": "invalid_request_error", "message": "Send a JSON object."}}, 400)
    try:
        return current_state().faults.update(changes)
    except ValueError as error:
        return answer({"error": {"type": "invalid_request_error", "message": str(error)}}, 400)
