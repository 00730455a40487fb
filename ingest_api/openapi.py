"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the models the
endpoints validate with (``ingest_api.schemas``), so it cannot drift from them."""

from __future__ import annotations

import functools

from flask import Blueprint, jsonify
from pydantic.json_schema import models_json_schema

from ingest_api import schemas
from shared import usage_totals

blueprint = Blueprint("openapi", __name__)

_MODELS = [
    (schemas.UsageEventIn, "validation"),
    (schemas.BatchEventIn, "validation"),
    (schemas.BatchIn, "validation"),
    (schemas.AcceptedOut, "serialization"),
    (schemas.UsageEventOut, "serialization"),
    (schemas.BatchOut, "serialization"),
    (schemas.ErrorOut, "serialization"),
    (schemas.OutcomeUnknownOut, "serialization"),
    (schemas.BatchOutcomeUnknownOut, "serialization"),
    (schemas.HealthOut, "serialization"),
    (schemas.ReadinessOut, "serialization"),
    (schemas.VoidIn, "validation"),
    (schemas.VoidOut, "serialization"),
    (schemas.UsageTotalsQuery, "validation"),
    (schemas.UsageTotalsOut, "serialization"),
]

_HEADERS = {
    "Location": "The event's status: GET it for the event's progress.",
    "Retry-After": "Seconds to wait before retrying.",
    "WWW-Authenticate": 'Bearer realm="agent700".',
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(schema: dict, description: str, headers: list[str] | None = None, media_type: str = "application/json") -> dict:
    response = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        response["headers"] = {h: {"description": _HEADERS[h], "schema": {"type": "string"}} for h in headers}
    return response


def _json(name: str, description: str, headers: list[str] | None = None) -> dict:
    return _response(_ref(name), description, headers)


_REASONS = {
    400: "The body is not JSON, or not a JSON object.",
    401: "Missing, malformed, forged, expired, unknown or revoked credential; inactive user.",
    403: "Not superadmin in an active membership of an active organization.",
    404: "No such event: never accepted.",
    409: "Idempotency-Key reused with a different body.",
    413: "Body over 64 KiB.",
    415: "Content-Type is not application/json.",
    422: "Invalid or unknown fields or references; see details.",
    429: "Too many requests with unknown or refused credentials (from this address, or from all); nothing was "
    "recorded. Retry after Retry-After with a valid credential.",
    503: "The queue, the database, or the JWKS endpoint that verifies the token is unavailable. Retry after Retry-After.",
}


def _errors(*statuses: int) -> dict:
    headers = {401: ["WWW-Authenticate"], 429: ["Retry-After"], 503: ["Retry-After"]}
    return {str(s): _json("ErrorOut", _REASONS[s], headers.get(s)) for s in statuses}


def _unavailable_or_unknown(unknown_model: str, description: str, headers: list[str]) -> dict:
    """503 in its two shapes: plain (nothing was accepted) or ``status: unknown``."""
    schema = {"anyOf": [_ref("ErrorOut"), _ref(unknown_model)]}
    return {"503": _response(schema, description, headers)}


def _operations_endpoint(operation_id: str, summary: str, responses: dict) -> dict:
    """An unauthenticated GET of the operations group."""
    return {"get": {"operationId": operation_id, "tags": ["operations"], "summary": summary, "security": [], "responses": responses}}


_EVENT_ID_PARAMETER = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}

_IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same caller, same key, same body: the same event, billed once. "
    f"{schemas.IDEMPOTENCY_KEY_RULE}.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": schemas.IDEMPOTENCY_KEY_PATTERN},
}


def _request_body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _usage_paths() -> dict:
    """The usage endpoints: accept one event, accept a batch, read an event's status."""
    return {
        "/api/billing/external-usage": {
            "post": {
                "operationId": "recordUsage",
                "tags": ["usage"],
                "summary": "Record one usage event for billing.",
                "parameters": [_IDEMPOTENCY_KEY_PARAMETER],
                "requestBody": _request_body("UsageEventIn"),
                "responses": {
                    "202": _json("AcceptedOut", "Accepted and queued.", ["Location"]),
                    "200": _json("AcceptedOut", "An Idempotency-Key replay of an accepted event.", ["Location"]),
                    **_errors(400, 401, 403, 409, 413, 415, 422, 429),
                    **_unavailable_or_unknown(
                        "OutcomeUnknownOut",
                        "Plain: the queue or the database is unavailable, nothing was accepted. "
                        'With "status": "unknown": the queue\'s reply was lost, the event `id` may or may not be '
                        "accepted (Location names its status). Either way retry after Retry-After with the same "
                        "Idempotency-Key.",
                        ["Retry-After", "Location"],
                    ),
                },
            }
        },
        "/api/billing/external-usage/batch": {
            "post": {
                "operationId": "recordUsageBatch",
                "tags": ["usage"],
                "summary": "Record up to 100 usage events, each judged on its own.",
                "description": "Each event carries its own `idempotency_key`; an Idempotency-Key header is "
                "refused with a 422 (field `Idempotency-Key`), since a key for the whole batch would not be used.",
                "requestBody": _request_body("BatchIn"),
                "responses": {
                    "200": _json("BatchOut", "One result per event, in order."),
                    **_errors(400, 401, 403, 413, 415, 422, 429),
                    **_unavailable_or_unknown(
                        "BatchOutcomeUnknownOut",
                        "Plain: the queue or the database is unavailable, nothing was accepted. "
                        'With "status": "unknown": the queue\'s reply was lost; each result is `unknown` (its `id` '
                        "may or may not be accepted) or `rejected`. Either way retry after Retry-After with the same "
                        "idempotency_key per event.",
                        ["Retry-After"],
                    ),
                },
            }
        },
        "/api/billing/external-usage/{event_id}": {
            "get": {
                "operationId": "getUsage",
                "tags": ["usage"],
                "summary": "The status of one event.",
                "parameters": [_EVENT_ID_PARAMETER],
                "responses": {"200": _json("UsageEventOut", "The event."), **_errors(401, 403, 404, 429, 503)},
            }
        },
        "/api/billing/external-usage/{event_id}/void": {
            "post": {
                "operationId": "voidUsage",
                "tags": ["usage"],
                "summary": "Void one recorded event: take it back, so nothing of it is billed.",
                "description": "Idempotent: a void asked again is answered with the event as it is, never done twice. "
                "To correct an event, void it, then send the right one.",
                "parameters": [_EVENT_ID_PARAMETER],
                "requestBody": _request_body("VoidIn"),
                "responses": {
                    "200": _json(
                        "UsageEventOut", "Voided: nothing of the event is billed (also the answer to a void asked again)."
                    ),
                    "202": _json(
                        "UsageEventOut",
                        "Void asked for; Stripe's side is under way (`void.method` says how, `void.completed_at` is null).",
                    ),
                    **_errors(400, 401, 403, 413, 415, 429),
                    "404": _json("ErrorOut", "No such event: never accepted."),
                    "409": _json(
                        "ErrorOut",
                        "Not voided, for the reason `error` gives: the event is still queued (retry after Retry-After), "
                        "the recorder refused it (nothing to void), or Stripe may hold it undeduplicated (run "
                        "`stripe reconcile`, then void it).",
                        ["Retry-After"],
                    ),
                    "422": _json("ErrorOut", "The reason is missing, empty, only spaces, over 500 characters or holds "
                                 "unstorable characters, or the body has another field; see details."),
                    **_errors(503),
                },
            }
        },
    }


def _query_parameter(name: str, required: bool) -> dict:
    """A query parameter of ``GET /api/billing/usage``, its schema ``UsageTotalsQuery``'s
    (the model the endpoint validates with); an optional one is left out, never null."""
    schema = dict(schemas.UsageTotalsQuery.model_json_schema(mode="validation")["properties"][name])
    description = schema.pop("description")
    for key in ("title", "default", "examples"):
        schema.pop(key, None)
    if "anyOf" in schema:  # optional: its one branch that is not null
        (schema,) = [branch for branch in schema["anyOf"] if branch.get("type") != "null"]
    parameter = {"name": name, "in": "query", "required": required, "description": description, "schema": schema}
    if name == "group_by":
        parameter |= {"style": "form", "explode": True}  # group_by=model_name&group_by=day
    return parameter


def _usage_totals_paths() -> dict:
    """An organization's usage totals over a window."""
    return {
        "/api/billing/usage": {
            "get": {
                "operationId": "usageTotals",
                "tags": ["usage"],
                "summary": "An organization's usage over [from, to): totals, grouped as asked, split by billing state.",
                "description": "Counts recorded events only (an event still queued is not in them yet). Any superadmin "
                "may read any organization's usage. `from` defaults to the start of the current UTC month, `to` to now; "
                f"the window is at most {usage_totals.MAX_SPAN.days} days. Money is exact decimal strings.",
                "parameters": [
                    _query_parameter("organization_id", True),
                    *(_query_parameter(name, False) for name in ("from", "to", "group_by")),
                ],
                "responses": {
                    "200": _json("UsageTotalsOut", "The totals."),
                    **_errors(401, 403),
                    "422": _json(
                        "ErrorOut",
                        "A parameter is missing, unknown, given twice or invalid, the organization does not exist, or "
                        f"the window is backwards, empty or over {usage_totals.MAX_SPAN.days} days; see details.",
                    ),
                    **_errors(429),
                    "503": _json("ErrorOut", "The database, or Redis checking the App Password, is unavailable. "
                                 "Retry after Retry-After.", ["Retry-After"]),
                },
            }
        },
    }


def _operations_paths() -> dict:
    """The operations endpoints, which take no credential."""
    return {
        "/healthz": _operations_endpoint(
            "healthz", "Liveness: 200 while the web process serves.", {"200": _json("HealthOut", "Serving.")}
        ),
        "/readyz": _operations_endpoint(
            "readyz",
            "Readiness: PostgreSQL and Redis both answered within 2 s.",
            {
                "200": _json("ReadinessOut", "Ready."),
                "503": _json("ReadinessOut", "Not ready; `failing` names what did not answer."),
            },
        ),
        "/metrics": _operations_endpoint(
            "metrics",
            "Prometheus metrics of this host's web and worker processes.",
            {"200": _response({"type": "string"}, "Prometheus text exposition format.", media_type="text/plain")},
        ),
        "/openapi.json": _operations_endpoint(
            "openapi", "This document.", {"200": _response({"type": "object"}, "The OpenAPI 3.1 document.")}
        ),
        "/docs": _operations_endpoint(
            "docs",
            "The interactive reference rendered from this document.",
            {"200": _response({"type": "string"}, "An HTML page.", media_type="text/html")},
        ),
    }


@functools.cache
def document() -> dict:
    _, definitions = models_json_schema(_MODELS, ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent700 external usage billing",
            "version": "1.0.0",
            "description": "Records LLM usage of internal services for billing through Stripe Billing Meters. "
            "A 2xx means the event will be billed exactly once; any other answer means nothing was recorded, "
            'except a 503 with "status": "unknown", which names the event it attempted. Send an Idempotency-Key '
            "and retry with it on any other answer.",
        },
        "tags": [
            {
                "name": "usage",
                "description": "Record usage events, read their status and an organization's totals (superadmin Bearer "
                "token).",
            },
            {"name": "operations", "description": "Health, readiness, metrics and this reference (no credential)."},
        ],
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A JWT access token (HS256; RS256/ES256 where the service has a public key or JWKS) "
                        "or an App Password (app_a7_...)."
                    ),
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": {**_usage_paths(), **_usage_totals_paths(), **_operations_paths()},
    }

@blueprint.get("/openapi.json")
def openapi_json():
    return jsonify(document())
