"""The account's event destinations, readable as Stripe's v2 API lists them:
``GET /v2/core/event_destinations`` and ``GET /v2/core/event_destinations/{id}``
(secret key), the shapes ``client.v2.core.event_destinations.list()`` / ``.retrieve()``
read.

This server has at most one destination: the configured ``webhook_url`` (``faults.py``),
a webhook endpoint receiving thin events of the two meter error report types, enabled.
Without a URL the list is empty. Its id is derived from the URL, so it stays the same
while the URL does. As at Stripe, ``webhook_endpoint.url`` is null unless asked for with
``include=webhook_endpoint.url``, and the signing secret is never returned (Stripe shows it
only in the create answer).
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint

from local_stripe.pipeline import current_state, stripe_api
from local_stripe.wire import StripeError, rfc3339

ENABLED_EVENTS = ("v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found")
INCLUDABLE = ("webhook_endpoint.url",)

bp = Blueprint("local_stripe_destinations", __name__)


def destination_id(url: str) -> str:
    return "ed_test_" + hashlib.sha256(url.encode()).hexdigest()[:24]


def _included(params: dict[str, Any]) -> list[str]:
    """``include`` as the SDK sends it (``include[0]=...``) or as a plain value."""
    include = params.get("include") or []
    values = list(include.values()) if isinstance(include, dict) else [include] if isinstance(include, str) else include
    for value in values:
        if value not in INCLUDABLE:
            raise StripeError(400, f"Invalid include: must be one of {', '.join(INCLUDABLE)}.", param="include")
    return values


def _destination(url: str, since: float, include_url: bool) -> dict[str, Any]:
    return {
        "id": destination_id(url),
        "object": "v2.core.event_destination",
        "amazon_eventbridge": None,
        "azure_event_grid": None,
        "created": rfc3339(since),
        "description": "The local Stripe server's event destination (its webhook_url setting).",
        "enabled_events": list(ENABLED_EVENTS),
        "event_payload": "thin",
        "events_from": ["@self"],
        "livemode": False,
        "metadata": {},
        "name": "local_stripe webhook_url",
        "snapshot_api_version": None,
        "status": "enabled",
        "status_details": None,
        "type": "webhook_endpoint",
        "updated": rfc3339(since),
        "webhook_endpoint": {"signing_secret": None, "url": url if include_url else None},
    }


def _destinations(params: dict[str, Any]) -> list[dict[str, Any]]:
    include_url = "webhook_endpoint.url" in _included(params)
    url, since = current_state().destination()
    return [] if url is None else [_destination(url, since, include_url)]


@bp.get("/v2/core/event_destinations")
@stripe_api("secret", accepts=("include", "limit", "page"))
def list_event_destinations(params: dict[str, Any]) -> dict[str, Any]:
    """One page holds them all (there is at most one)."""
    limit = params.get("limit")
    if limit is not None and not (str(limit).isdigit() and 1 <= int(limit) <= 100):
        raise StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    return {"data": _destinations(params), "next_page_url": None, "previous_page_url": None}


@bp.get("/v2/core/event_destinations/<destination>")
@stripe_api("secret", accepts=("include",))
def retrieve_event_destination(params: dict[str, Any], destination: str) -> dict[str, Any]:
    found = [item for item in _destinations(params) if item["id"] == destination]
    if not found:
        raise StripeError(404, f"No such event destination: '{destination}'", code="resource_missing", param="id")
    return found[0]
