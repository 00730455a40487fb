"""The local Stripe server's Flask application: Billing Meters over Stripe's wire protocol.

Stripe routes (the real ``stripe`` SDK works against them unchanged; point both the
"api" and the "meter_events" base addresses here):

* ``POST /v1/billing/meter_events`` - synchronous meter event (form-encoded, secret key).
* ``POST /v2/billing/meter_event_session`` - session with a short-lived token (JSON).
* ``POST /v2/billing/meter_event_stream`` - up to 100 events (JSON, session token),
  validated asynchronously (``validator.py``).
* ``POST /v1/billing/meters``, ``GET /v1/billing/meters[?status=]``,
  ``GET /v1/billing/meters/{id}``, ``POST /v1/billing/meters/{id}/deactivate|reactivate``,
  ``GET /v1/billing/meters/{id}/event_summaries``.
* ``POST /v1/customers``, ``GET /v1/customers[?email=]``, ``GET|DELETE /v1/customers/{id}``.
* ``GET /v2/core/events[?types=&object_id=&created[gt|gte|lt|lte]=&limit=]``,
  ``GET /v2/core/events/{id}`` - the meter error reports, also sent to the event
  destination (``webhooks.py``).
* ``GET /v2/core/event_destinations``, ``GET /v2/core/event_destinations/{id}`` - the
  configured ``webhook_url`` as one destination, or none (``destinations.py``).
* ``POST /v1/billing/meter_event_adjustments`` (form), ``POST
  /v2/billing/meter_event_adjustments`` (JSON), both with the secret key - cancel an event
  received within 24 h (``adjustments.py``).

Local routes (not Stripe; see ``faults.py`` for the settings):
``GET /_local/meter_events[?status=valid|pending|invalid]``, ``POST /_local/customers``
(a customer with a chosen id), ``POST /_local/validate`` (judge every pending v2 event
now), ``GET /_local/clock``, ``POST /_local/clock {"advance_seconds": N}`` (the server's
clock, ``clock.py``; what became due is done before the answer), ``POST /_local/reset``,
``GET|POST /_local/faults``.

Every Stripe call runs: authentication -> idempotency key -> injected failure ->
endpoint -> injected latency (taken once; v1 meter events take it inside their customer
claims), as ``pipeline.py`` describes. Every answer carries a ``Request-Id`` header.

Stripe's hard edges are kept, by default: every time rule reads the server's clock;
identifiers are unique within a rolling 24 h of their first receipt (across v1 and v2);
idempotency keys are stored as Stripe stores them (per account, 24 h; v1 keeps its first
answer once the endpoint began, an injected 500 included; v2 keeps successes only);
summaries are per meter and lag ``summary_lag_seconds`` (2 s) behind receipt; one v1 call
per customer per meter at a time; whole-number values only; error reports per meter per
``report_window_seconds`` (60 s) window once it has ended, sampling the stream call's
idempotency key. Kinder settings exist for tests (``faults.py``).

Where this server knowingly differs from Stripe (so tests stay simple and deterministic):

* v2 stream events are judged ``validation_delay_seconds`` (default 1 s) after receipt,
  against the account as it is then (a meter or customer created meanwhile counts), with
  timestamps judged against receipt. Stripe's delay and its report windows are its own;
  here windows are aligned on multiples of ``report_window_seconds``. The reports' codes
  and ``data`` follow Stripe's documentation; their error messages are this server's
  (Stripe documents few). Whether Stripe's ``sample_errors[].request.identifier`` is the
  request's idempotency key (the SDK's description, the default here) or the event's
  identifier (``sample_request_identifier``) is not certain.
* v1 meter events are judged in the request with the same rules and codes (400), except
  that a missing meter or customer is ``resource_missing``; Stripe does not document its
  v1 codes for these cases. A value with decimals is ``meter_event_invalid_value``, like
  one that is not a number.
* Identifiers: an event dropped as invalid frees its identifier, so a corrected resend
  counts; a canceled event keeps it. v1: a known identifier answers 400
  ``resource_already_exists``. v2: an event whose identifier is known (from an earlier
  call or earlier in the same call) is dropped silently; the call still answers ``{}``.
* Summaries: with a grouping window only windows that have events are listed, newest
  first. The lag is one fixed delay (Stripe's varies).
* Idempotency: keys are scoped by the ``Stripe-Account`` header (one account otherwise).
  Which v1 errors count as "the endpoint began" is this server's reading: everything
  after the parameters' shape is checked (a missing customer, a duplicate identifier, an
  injected 500). A replayed 5xx says ``Stripe-Should-Retry: false``.
* Adjustments cancel single events only (Stripe's only kind), answer ``status: pending``
  and take effect after the summary lag; an unknown, too old or other-named event is 400
  ``resource_missing``, an already canceled one 400 (v2 ``already_canceled``).
* Customers hold only their basic fields (name, email, description, phone, metadata).
* v2 events are the two meter error report types only, kept for the server's lifetime
  (Stripe: 30 days). List pages are ``page`` tokens that carry the filters, so ``page``
  takes no other parameter. A ``no_meter_found`` event's ``related_object`` is null.
* One event destination for all event types, thin payloads only; a failed delivery is
  retried 4 times within about 8 s by real time (Stripe: for up to 3 days). Webhook
  signatures are timestamped by real time, as the receiver checks them against its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import secrets
from typing import Any

from flask import Blueprint, Flask, Response, g, request

from local_stripe import adjustments, destinations
from local_stripe.account import LocalStripe
from local_stripe.events import Problem, judge, parse_event, v1_name, v2_namer
from local_stripe.pipeline import (
    answer,
    current_state,
    customer_calls,
    executing,
    idempotency_key,
    request_params,
    stripe_api,
)
from local_stripe.state import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, new_customer, new_meter
from local_stripe.wire import StripeError, missing, new_id, parse_rfc3339, reject_unknown, rfc3339

MAX_STREAM_EVENTS = 100
WINDOWS = {"hour": 3600, "day": 86400}
FORMULAS = ("count", "last", "sum")
CUSTOMER_FIELDS = ("name", "email", "description", "phone", "metadata")
MAX_EVENT_TYPES = 20
CREATED_BOUNDS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}

bp = Blueprint("local_stripe", __name__)


def state_of(app: Flask) -> LocalStripe:
    """The server state behind ``app`` (for tests: no HTTP needed)."""
    return app.extensions["local_stripe"]


def create_app(**settings: Any) -> Flask:
    """The app, its validator and webhook threads started; ``settings`` are the defaults
    of ``faults.py``'s settings."""
    app = Flask(__name__)
    state = app.extensions["local_stripe"] = LocalStripe(**settings)
    state.start()
    app.register_blueprint(bp)
    app.register_blueprint(destinations.bp)
    app.register_blueprint(adjustments.bp)
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
@stripe_api("secret", accepts=("event_name", "payload", "identifier", "timestamp", "expand"))
def create_meter_event(params: dict[str, Any]) -> dict[str, Any]:
    store = current_state().store
    event = parse_event(params, via="v1", name=v1_name, now=store.clock.now(), idempotency_key=idempotency_key())
    executing()
    verdict = judge(event, meter=store.meter_for(event.event_name), customer_exists=store.customer_exists)
    if isinstance(verdict, Problem):
        raise verdict.v1_error()
    with customer_calls([(verdict.customer, verdict.event_name)]):
        store.record([verdict], duplicates="reject")
    return verdict.v1_object()


@bp.post("/v2/billing/meter_event_session")
@stripe_api("secret", accepts=())
def create_meter_event_session(params: dict[str, Any]) -> dict[str, Any]:
    executing()
    now = current_state().clock.now()
    expires_at = now + current_state().faults.current.session_ttl_seconds
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
@stripe_api("session", accepts=("events",))
def create_meter_event_stream(params: dict[str, Any]) -> dict[str, Any]:
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
    store = current_state().store
    now, key = store.clock.now(), idempotency_key()
    parsed = []
    for index, raw in enumerate(events):
        prefix = f"events[{index}]"
        if not isinstance(raw, dict):
            raise StripeError(400, f"Invalid {prefix}: must be an object.", param=prefix)
        reject_unknown(raw, ("event_name", "payload", "identifier", "timestamp"), prefix=f"{prefix}.")
        parsed.append(parse_event(raw, via="v2", name=v2_namer(prefix), now=now, idempotency_key=key))
    # Only the shape is checked here; the validator judges the events later. The
    # one-call-per-customer rule is v1's: the stream is built for concurrent calls.
    executing()
    store.record(parsed, duplicates="skip", pending=True)
    current_state().validator.received()
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
@stripe_api(
    "secret",
    accepts=(
        "display_name", "event_name", "default_aggregation", "customer_mapping", "value_settings",
        "event_time_window", "expand",
    ),
)
def create_meter(params: dict[str, Any]) -> dict[str, Any]:
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
    executing()
    meter = new_meter(
        params["event_name"],
        display_name=params["display_name"],
        formula=formula,
        customer_key=mapping.get("event_payload_key") or DEFAULT_CUSTOMER_KEY,
        value_key=_object_param(params, "value_settings").get("event_payload_key") or DEFAULT_VALUE_KEY,
        event_time_window=window,
        now=current_state().clock.now(),
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
    executing()
    return _meter_or_404(current_state().store.set_meter_status(meter_id, status), meter_id)


@bp.get("/v1/billing/meters/<meter_id>/event_summaries")
@stripe_api(
    "secret",
    accepts=(
        "customer", "start_time", "end_time", "value_grouping_window", "limit", "starting_after", "ending_before",
        "expand",
    ),
)
def list_event_summaries(params: dict[str, Any], meter_id: str) -> dict[str, Any]:
    meter = _meter_or_404(current_state().store.meter(meter_id), meter_id)
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
    lag = current_state().faults.current.summary_lag_seconds
    summaries = current_state().store.summarize(meter, customer, start, end, WINDOWS.get(window) if window else None, lag)
    return _page(summaries, params, f"/v1/billing/meters/{meter_id}/event_summaries")


# -- customers ------------------------------------------------------------------------


def _customer_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The customer fields given (``metadata`` must be an object)."""
    _object_param(params, "metadata")
    return {name: params[name] for name in CUSTOMER_FIELDS if params.get(name) not in (None, "")}


def _no_such_customer(customer_id: str) -> StripeError:
    return StripeError(404, f"No such customer: '{customer_id}'", code="resource_missing", param="id")


@bp.post("/v1/customers")
@stripe_api("secret", accepts=(*CUSTOMER_FIELDS, "expand"))
def create_customer(params: dict[str, Any]) -> dict[str, Any]:
    fields = _customer_fields(params)
    executing()
    return current_state().store.add_customer(new_customer(now=current_state().clock.now(), **fields))


@bp.get("/v1/customers")
@stripe_api("secret", accepts=("email", "limit", "starting_after", "ending_before", "expand"))
def list_customers(params: dict[str, Any]) -> dict[str, Any]:
    return _page(current_state().store.customers(params.get("email") or None), params, "/v1/customers")


@bp.get("/v1/customers/<customer_id>")
@stripe_api("secret")
def retrieve_customer(customer_id: str) -> dict[str, Any]:
    """A deleted customer answers its deleted form, as at Stripe."""
    customer = current_state().store.customer(customer_id)
    if customer is None:
        raise _no_such_customer(customer_id)
    return customer


@bp.delete("/v1/customers/<customer_id>")
@stripe_api("secret")
def delete_customer(customer_id: str) -> dict[str, Any]:
    deleted = current_state().store.delete_customer(customer_id)
    if deleted is None:
        raise _no_such_customer(customer_id)
    return deleted


# -- v2 events ------------------------------------------------------------------------


def _event_query(params: dict[str, Any]) -> dict[str, Any]:
    """The list filters and page size, checked: types (up to 20), object_id, created
    bounds (RFC 3339, kept as Unix seconds), limit (1-100, default 20)."""
    types = params.get("types")
    if isinstance(types, dict):  # the SDK sends types[0]=...&types[1]=...
        types = list(types.values())
    elif isinstance(types, str):
        types = request.args.getlist("types")
    if types is not None and not 1 <= len(types) <= MAX_EVENT_TYPES:
        raise StripeError(400, f"Invalid types: give 1 to {MAX_EVENT_TYPES} event types.", param="types")
    created = _object_param(params, "created")
    reject_unknown(created, CREATED_BOUNDS, prefix="created.")
    bounds = {}
    for bound, text in created.items():
        try:
            bounds[bound] = parse_rfc3339(text)
        except (TypeError, ValueError, AttributeError):
            raise StripeError(
                400, f"Invalid created.{bound}: must be an RFC 3339 date-time.", param=f"created.{bound}"
            ) from None
    limit = _int_param(params, "limit", default=20)
    if not 1 <= limit <= 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    return {"types": types, "object_id": params.get("object_id") or None, "created": bounds, "limit": limit}


def _matches(event: dict[str, Any], query: dict[str, Any]) -> bool:
    related = event["related_object"] or {}
    created = parse_rfc3339(event["created"])
    return (
        (query["types"] is None or event["type"] in query["types"])
        and query["object_id"] in (None, related.get("id"))
        and all(CREATED_BOUNDS[bound](created, value) for bound, value in query["created"].items())
    )


def _page_url(query: dict[str, Any], **cursor: str) -> str:
    """A v2 list page: an opaque token carrying the query and ``after`` or ``before`` an id."""
    token = base64.urlsafe_b64encode(json.dumps({**query, **cursor}).encode()).decode().rstrip("=")
    return f"/v2/core/events?page={token}"


def _decode_page(params: dict[str, Any]) -> dict[str, Any]:
    if set(params) != {"page"}:
        raise StripeError(400, "Invalid page: it carries the list's parameters; send it alone.", param="page")
    try:
        token = params["page"]
        query = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, TypeError):
        query = None
    keys = {"types", "object_id", "created", "limit"}
    if not isinstance(query, dict) or not keys <= set(query) <= keys | {"after", "before"}:
        raise StripeError(400, "Invalid page token.", param="page")
    return query


@bp.get("/v2/core/events")
@stripe_api("secret", accepts=("types", "object_id", "created", "limit", "page"))
def list_core_events(params: dict[str, Any]) -> dict[str, Any]:
    """Newest first, ``limit`` a page, with the next and previous pages' URLs (or null)."""
    query = _decode_page(params) if "page" in params else _event_query(params)
    cursor = {key: query.pop(key) for key in ("after", "before") if key in query}
    events = [event for event in current_state().store.core_events() if _matches(event, query)]
    ids = [event["id"] for event in events]
    if any(cursor_id not in ids for cursor_id in cursor.values()):
        raise StripeError(400, "Invalid page: its position no longer exists.", param="page")
    if "before" in cursor:
        end = ids.index(cursor["before"])
        start = max(0, end - query["limit"])
    else:
        start = ids.index(cursor["after"]) + 1 if "after" in cursor else 0
        end = start + query["limit"]
    page = events[start:end]
    return {
        "data": page,
        "next_page_url": _page_url(query, after=page[-1]["id"]) if page and end < len(events) else None,
        "previous_page_url": _page_url(query, before=page[0]["id"]) if page and start > 0 else None,
    }


@bp.get("/v2/core/events/<event_id>")
@stripe_api("secret")
def retrieve_core_event(event_id: str) -> dict[str, Any]:
    event = current_state().store.core_event(event_id)
    if event is None:
        raise StripeError(404, f"No such event: '{event_id}'", code="resource_missing", param="id")
    return event


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


# -- local inspection, test set-up and fault injection (not Stripe) ----------------------


def _local_error(message: str) -> Response:
    return answer({"error": {"type": "invalid_request_error", "message": message}}, 400)


@bp.get("/_local/meter_events")
def local_meter_events() -> Response | dict[str, Any]:
    """Meter events, oldest first: ``status`` valid (default; what summaries count),
    pending (v2, not yet judged) or invalid (dropped, with ``error_code`` and ``error_message``);
    ``canceled_at`` is set once an adjustment canceled the event."""
    status = request.args.get("status", "valid")
    if status not in ("valid", "pending", "invalid"):
        return _local_error("status must be valid, pending or invalid")
    return {"object": "list", "data": current_state().store.meter_events(status)}


@bp.post("/_local/customers")
def local_create_customer() -> Response | dict[str, Any]:
    """A customer with a chosen id (JSON ``{"id": "cus_...", "name"?, "email"?, ...}``);
    answers the existing one if that id is taken by a customer not deleted."""
    params = request.get_json(silent=True)
    if not isinstance(params, dict) or not isinstance(params.get("id"), str) or not params["id"]:
        return _local_error('Send a JSON object with an "id".')
    unknown = set(params) - {"id", *CUSTOMER_FIELDS}
    if unknown:
        return _local_error(f"unknown customer fields: {', '.join(sorted(unknown))}")
    store = current_state().store
    if store.customer_exists(params["id"]):
        return store.customer(params["id"])
    try:
        # Taken by a deleted customer: refused, as Stripe never reuses an id.
        return store.add_customer(new_customer(params["id"], now=store.clock.now(), **_customer_fields(params)))
    except StripeError as error:
        return _local_error(error.message)


@bp.post("/_local/validate")
def local_validate() -> dict[str, Any]:
    """Judge every pending v2 event now (reports included), instead of after the delay."""
    current_state().validator.validate()
    return {"validated": True}


@bp.get("/_local/clock")
def local_clock() -> dict[str, Any]:
    """The server's now (Unix seconds) and its offset from real time."""
    clock = current_state().clock
    return {"now": clock.now(), "offset": clock.offset}


@bp.post("/_local/clock")
def local_advance_clock() -> Response | dict[str, Any]:
    """Move the clock forward (JSON ``{"advance_seconds": N}``, N >= 0); what became due
    (judging events, error reports) is done before the answer, which is as for GET."""
    body = request.get_json(silent=True)
    seconds = body.get("advance_seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return _local_error('Send a JSON object with "advance_seconds": a number >= 0.')
    current_state().advance_clock(seconds)
    return local_clock()


@bp.post("/_local/reset")
def local_reset() -> dict[str, Any]:
    """Forget everything (customers, meters, meter and v2 events, sessions, idempotency keys,
    deliveries not yet made); settings back to the server's defaults, the clock to real time."""
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
        return _local_error("Send a JSON object.")
    try:
        return current_state().update_settings(changes)
    except ValueError as error:
        return _local_error(str(error))
