"""``GET /api/billing/usage``: what an organization used over a window, as
``shared.usage_totals`` counts it, and ``answer``: those totals as the JSON document the
endpoint and ``usage summary --json`` both print (``UsageTotalsOut``).

The query is judged before anything is read: every parameter is known and given once
(``group_by`` excepted, repeated for each group), its value valid (``UsageTotalsQuery``),
then the organization exists, then the window is one ``totals`` answers. Any superadmin
may read any organization's usage, as any superadmin may record usage for any
organization and read any event.
"""

from __future__ import annotations

import datetime as dt

import pydantic
from flask import Blueprint, current_app, jsonify, request
from werkzeug.datastructures import MultiDict

from ingest_api.auth import refuse_if_revoked, superadmin_required
from ingest_api.errors import ApiError
from ingest_api.schemas import UsageTotalsOut, UsageTotalsQuery, error_details
from shared import db, models, usage_totals

blueprint = Blueprint("usage_totals", __name__, url_prefix="/api/billing/usage")

# What the figures count (see shared.usage_totals): said in every answer, so that a
# figure is never read as including the events still in the queue.
COVERS = (
    "Recorded events only, as of as_of: an event accepted but still queued (a second or two while the pipeline "
    "is healthy) is not counted yet; its status record says queued."
)
_REPEATABLE = {"group_by"}
_PARAMETERS = {field.alias or name for name, field in UsageTotalsQuery.model_fields.items()}


@blueprint.get("", endpoint="usage_totals")
@superadmin_required
def usage_totals_answer():
    refuse_if_revoked()
    query = _query(request.args)
    since, until = _window(query)
    with db.transaction(current_app.config["SETTINGS"].database_url) as session:
        if session.get(models.Organization, query.organization_id) is None:
            raise ApiError(
                422,
                "The query refers to something that does not exist.",
                details=[{"field": "organization_id", "message": "No organization with this id."}],
            )
        found = usage_totals.totals(session, query.organization_id, since, until, query.group_by)
    return jsonify(answer(found))


def _query(args: MultiDict) -> UsageTotalsQuery:
    """The query string as a ``UsageTotalsQuery``, or 422 naming every problem."""
    problems = [
        {"field": name, "message": "Unknown parameter."} for name in args if name not in _PARAMETERS
    ] + [
        {"field": name, "message": "Given more than once; give it once."}
        for name in _PARAMETERS - _REPEATABLE
        if len(args.getlist(name)) > 1
    ]
    values = {name: args.getlist(name) if name in _REPEATABLE else args.get(name) for name in _PARAMETERS if name in args}
    try:
        query = UsageTotalsQuery.model_validate(values)
    except pydantic.ValidationError as error:
        problems += error_details(error)
    if problems:
        raise ApiError(422, "The usage query is invalid.", details=problems)
    return query


def _window(query: UsageTotalsQuery) -> tuple[dt.datetime, dt.datetime]:
    """``[from, to)`` with its defaults (the start of the current UTC month, now), or 422
    when ``totals`` would refuse it; the message names the window as taken."""
    now = dt.datetime.now(dt.UTC)
    since = query.from_ or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    until = query.to or now
    try:
        usage_totals.check_window(since, until)
    except usage_totals.BadWindow as bad:
        taken = f"The window taken is [{_time(since)}, {_time(until)})"
        if query.from_ is None or query.to is None:
            taken += " (`from` defaults to the start of the current UTC month, `to` to now)"
        raise ApiError(
            422, "The usage window is invalid.", details=[{"field": "to", "message": f"{bad} {taken}."}]
        ) from None
    return since, until


def _time(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def answer(found: usage_totals.UsageTotals) -> dict:
    """The totals as the contract's JSON document: money as exact decimal strings, ids
    and times as strings (times in UTC, with a Z)."""
    document = UsageTotalsOut(
        organization_id=found.organization_id,
        from_=found.since.astimezone(dt.UTC),
        to=found.until.astimezone(dt.UTC),
        group_by=found.group_by,
        as_of=found.as_of.astimezone(dt.UTC),
        covers=COVERS,
        total=_total(found.total),
        groups=[{"key": group.key, **_total(group)} for group in found.groups],
    )
    # Unset fields are a group key's names not grouped by: absent, not null.
    return document.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _total(group: usage_totals.Group) -> dict:
    return {**_figures(group.total), "by_state": {state: _figures(group.by_state[state]) for state in usage_totals.STATES}}


def _figures(figures: usage_totals.Figures) -> dict:
    return {
        "events": figures.events,
        "input_tokens": figures.input_tokens,
        "output_tokens": figures.output_tokens,
        # Fixed-point always: str(Decimal) would write small sums with an exponent (1.5E-7).
        "service_cost": format(figures.service_cost, "f"),
        "agent700_cost": format(figures.agent700_cost, "f"),
        "stripe_value": figures.stripe_value,
    }
