"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the models the
endpoints validate with (``ingest_api.schemas``), so it cannot drift from them."""

from __future__ import annotations

import functools

from flask import Blueprint, jsonify
from pydantic.json_schema import models_json_schema

from ingest_api import schemas

blueprint = Blueprint("openapi", __name__)

_MODELS = [
    (schemas.UsageEventIn, "validation"),
    (schemas.BatchEventIn, "validation"),
    (schemas.BatchIn, "validation"),
    (schemas.AcceptedOut, "serialization"),
    (schemas.UsageEventOut, "serialization"),
    (schemas.BatchOut, "serialization"),
    (schemas.ErrorOut, "serialization"),
]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": _ref(name)}}}
    if headers:
        response["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
    return response


def _errors(*statuses: int) -> dict:
    reasons = {
        400: "The body is not JSON, or not a JSON object.",
        401: "Missing, malformed, forged, expired, unknown or revoked credential; inactive user.",
        403: "Not superadmin in an active membership of an active organization.",
        404: "No such event.",
        409: "Idempotency-Key reused with a different body.",
        413: "Body over 64 KiB.",
        415: "Content-Type is not application/json.",
        422: "Invalid or unknown fields or references; see details.",
        503: "The queue, or the JWKS endpoint that verifies the token, is unavailable; nothing was accepted.",
    }
    headers = {401: ["WWW-Authenticate"], 503: ["Retry-After"]}
    return {str(s): _json("ErrorOut", reasons[s], headers.get(s)) for s in statuses}


@functools.cache
def document() -> dict:
    _, definitions = models_json_schema(_MODELS, ref_template="#/components/schemas/{model}")
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Same caller, same key, same body: the same event, billed once. 1 to 255 printable ASCII.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    }
    body = lambda name: {"required": True, "content": {"application/json": {"schema": _ref(name)}}}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent700 external usage billing",
            "version": "1.0.0",
            "description": "Records LLM usage of internal services for billing through Stripe Billing Meters.",
        },
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
        "paths": {
            "/api/billing/external-usage": {
                "post": {
                    "operationId": "recordUsage",
                    "summary": "Record one usage event for billing.",
                    "parameters": [idempotency_key],
                    "requestBody": body("UsageEventIn"),
                    "responses": {
                        "202": _json("AcceptedOut", "Accepted and queued.", ["Location"]),
                        "200": _json("AcceptedOut", "An Idempotency-Key replay of an accepted event.", ["Location"]),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/api/billing/external-usage/batch": {
                "post": {
                    "operationId": "recordUsageBatch",
                    "summary": "Record up to 100 usage events, each judged on its own.",
                    "requestBody": body("BatchIn"),
                    "responses": {
                        "200": _json("BatchOut", "One result per event, in order."),
                        **_errors(400, 401, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/api/billing/external-usage/{event_id}": {
                "get": {
                    "operationId": "getUsage",
                    "summary": "The status of one event.",
                    "parameters": [
                        {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
                    ],
                    "responses": {"200": _json("UsageEventOut", "The event."), **_errors(401, 403, 404, 503)},
                }
            },
        },
    }


@blueprint.get("/openapi.json")
def openapi_json():
    return jsonify(document())
