"""The usage API's routes: accept one event, accept a batch of events, and answer an
event's status (read by ``ingest_api.event_status``)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pydantic
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from ingest_api import MAX_BODY_BYTES
from ingest_api.auth import refuse_if_revoked, revoked_unauthorized, superadmin_required
from ingest_api.catalog import Catalog
from ingest_api.errors import ApiError
from ingest_api.event_status import event_status
from ingest_api.event_void import void_event
from ingest_api.kept_keys import KeptKey, kept_keys
from ingest_api.schemas import (
    IDEMPOTENCY_KEY_RULE,
    BatchEventIn,
    BatchIn,
    UsageEventIn,
    VoidIn,
    error_details,
    valid_idempotency_key,
)
from shared import metrics, queue
from shared.intake import Intake, OutcomeUnknown, QueueUnavailable, Revoked, fingerprint
from shared.usage_event import AcceptedUsageEvent

blueprint = Blueprint("usage", __name__, url_prefix="/api/billing/external-usage")
RETRY_AFTER_SECONDS = "2"


def catalog() -> Catalog:
    return current_app.extensions["catalog"]


def current_intake() -> Intake:
    return current_app.extensions["intake"]


def _body_bytes() -> bytes:
    """The request body, or 413 when it is over ``MAX_BODY_BYTES``.

    Read one byte past the limit here: for a streamed (chunked) body werkzeug stops at
    ``MAX_CONTENT_LENGTH`` without an error, so ``get_data`` would hand over the first
    64 KiB of a larger body as if it were all of it. A declared ``Content-Length`` over
    the limit is refused by ``get_input_stream`` before anything is read.
    """
    stream = get_input_stream(request.environ, max_content_length=MAX_BODY_BYTES + 1)
    raw = stream.read()
    if len(raw) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return raw


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


# Python refuses to convert an integer of more than 4,300 digits (a guard against
# quadratic conversion), which would make a number too big for any field a 400 "not
# JSON". No field takes one of even 20 digits, so a longer integer is kept as a stand-in
# of its sign that is just as far out of range: the field it is in gets its 422.
_OUT_OF_RANGE_DIGITS = 20
_OUT_OF_RANGE = 10**_OUT_OF_RANGE_DIGITS


def _json_int(digits: str) -> int:
    if len(digits) <= _OUT_OF_RANGE_DIGITS:
        return int(digits)
    return -_OUT_OF_RANGE if digits.startswith("-") else _OUT_OF_RANGE


# No NaN/Infinity, which Python's parser allows but JSON does not. Built once: json.loads
# with an argument builds a new decoder on every call.
_JSON_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_int=_json_int)


def _json_bytes() -> bytes:
    if request.mimetype != "application/json":
        raise ApiError(415, "Content-Type must be application/json.")
    return _body_bytes()


def _json_object(raw: bytes) -> dict:
    try:
        # UTF-8 only (json.loads on bytes would also take UTF-16 and UTF-32).
        body = _JSON_DECODER.decode(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid UTF-8 JSON.") from None
    except RecursionError:
        # A few KiB of brackets nest deeper than the parser recurses; no event is built
        # from anything deeper than an object of strings and numbers anyway.
        raise ApiError(400, "The request body is nested too deeply to be a usage event.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _idempotency_key() -> str | None:
    # The server has stripped the value's surrounding spaces already; a key that is only
    # spaces arrives empty, and is refused.
    key = request.headers.get("Idempotency-Key")
    if key is not None and not valid_idempotency_key(key):
        raise ApiError(
            422,
            "The Idempotency-Key header is invalid.",
            details=[{"field": "Idempotency-Key", "message": f"{IDEMPOTENCY_KEY_RULE}."}],
        )
    return key


def _no_idempotency_key_header() -> None:
    """A batch's keys are its events' own: a header key would be ignored, and a retried
    batch billed twice."""
    if "Idempotency-Key" in request.headers:
        raise ApiError(
            422,
            "The batch endpoint takes no Idempotency-Key header.",
            details=[{
                "field": "Idempotency-Key",
                "message": "Not used for a batch: give each event its own idempotency_key in the body.",
            }],
        )


def _validated(model: type[UsageEventIn], body: dict, received_at: dt.datetime) -> UsageEventIn:
    """The body as ``model``, or 422 with every problem."""
    try:
        return model.model_validate(body, context={"received_at": received_at})
    except pydantic.ValidationError as error:
        raise ApiError(422, "The usage event is invalid.", details=error_details(error)) from None


def _validated_json(raw: bytes, received_at: dt.datetime) -> UsageEventIn:
    """The body as a ``UsageEventIn``, or the contract's 400/422.

    A valid body is parsed and validated in one pass by pydantic-core, which accepts only
    what the step-by-step path below accepts (strict JSON, UTF-8, the same model). Any
    refusal takes that path, to answer 400 for what is not a JSON object and 422 with
    every problem otherwise.
    """
    try:
        return UsageEventIn.model_validate_json(raw, context={"received_at": received_at})
    except pydantic.ValidationError:
        return _validated(UsageEventIn, _json_object(raw), received_at)


def _accepted_event(
    validated: UsageEventIn, received_at: dt.datetime, idempotency_key: str | None, body_fingerprint: str
) -> AcceptedUsageEvent:
    # Validating again is cheaper than not (pydantic-core builds the model in about 3 µs;
    # model_construct, in Python, took 25 µs an event: 13 % of a batch's time).
    return AcceptedUsageEvent(
        id=uuid.uuid4(),
        user_id=validated.user_id,
        organization_id=validated.organization_id,
        service_name=validated.service_name,
        model_name=validated.model_name,
        input_tokens=validated.input_tokens,
        output_tokens=validated.output_tokens,
        source=validated.source,
        occurred_at=validated.occurred_at or received_at,
        received_at=received_at,
        caller_user_id=g.caller.user_id,
        idempotency_key=idempotency_key,
        idempotency_fingerprint=body_fingerprint or None,
    )


def _fingerprint(body: dict) -> str:
    """The body as a JSON object (key order and spacing do not matter), to match an
    Idempotency-Key's replays."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "idempotency_key"}, sort_keys=True).encode()
    return fingerprint(canonical)


def _unavailable(message: str) -> ApiError:
    return ApiError(503, message, headers={"Retry-After": RETRY_AFTER_SECONDS})


class OutcomeUnknownAnswer(ApiError):
    """503 for a publish whose reply was lost: the events may or may not be accepted.
    The body names the ids attempted and what the caller should do."""

    def __init__(self, event_ids: list[uuid.UUID], batch_results: list[dict] | None = None):
        if batch_results is None:
            message = (
                "The billing queue did not confirm this event, so whether it was accepted is unknown. "
                "Retry with the same Idempotency-Key (billed once either way), or ask "
                f"GET {blueprint.url_prefix}/{event_ids[0]} once the service answers: 404 means it was not accepted."
            )
            extra = {"status": "unknown", "id": str(event_ids[0])}
        else:
            message = (
                "The billing queue did not confirm these events, so whether they were accepted is unknown. "
                "Retry each with the same idempotency_key (billed once either way), or ask the status of each id "
                "once the service answers: 404 means it was not accepted."
            )
            extra = {"status": "unknown", "results": batch_results}
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
        if batch_results is None:
            headers["Location"] = f"{blueprint.url_prefix}/{event_ids[0]}"
        super().__init__(503, message, headers=headers, extra=extra)
        self.event_ids = event_ids


def _queue(pairs) -> list:
    """Accept the (event, fingerprint) pairs; wake the recorder if the intake was idle."""
    try:
        accepted = current_intake().accept(pairs, g.caller.app_password_id)
    except Revoked:
        raise revoked_unauthorized() from None
    except QueueUnavailable:
        metrics.enqueue_failures.inc()
        raise _unavailable("The billing queue is unavailable; nothing was recorded. Retry later.") from None
    except OutcomeUnknown as unknown:
        metrics.enqueue_failures.inc()
        if unknown.not_replicated:
            metrics.replica_ack_failures.inc()
        g.event_ids = [str(event_id) for event_id in unknown.event_ids]
        raise
    if accepted.wake_recorder:
        queue.wake_recorder()
    acceptances = accepted.acceptances
    metrics.events_accepted.inc(sum(1 for acceptance in acceptances if acceptance.status == "queued"))
    g.event_ids = [str(acceptance.event_id) for acceptance in acceptances]
    return acceptances


# The endpoint names are kept from when these routes were called record_usage: they are
# the route label of the request metrics and log lines.
@blueprint.post("", endpoint="record_usage")
@superadmin_required
def accept_usage():
    received_at = dt.datetime.now(dt.UTC)
    idempotency_key = _idempotency_key()
    raw = _json_bytes()
    if idempotency_key is None:
        validated, body_fingerprint = _validated_json(raw, received_at), ""
    else:
        # The fingerprint needs the parsed object anyway: parse once, validate that.
        body = _json_object(raw)
        validated, body_fingerprint = _validated(UsageEventIn, body, received_at), _fingerprint(body)
    event = _accepted_event(validated, received_at, idempotency_key, body_fingerprint)
    unknown = catalog().unknown_references([event])[0]
    if unknown:
        raise ApiError(422, "The usage event refers to something that does not exist.", details=unknown)
    if idempotency_key is not None and (kept := _kept_keys([idempotency_key]).get(idempotency_key)):
        if not kept.same_body(body_fingerprint):
            raise ApiError(409, "This Idempotency-Key was already used with a different body.")
        return _event_answer(200, str(kept.event_id), kept.status)
    try:
        (outcome,) = _queue([(event, body_fingerprint)])
    except OutcomeUnknown:
        raise OutcomeUnknownAnswer([event.id]) from None
    if outcome.status == "conflict":
        raise ApiError(409, "This Idempotency-Key was already used with a different body.")
    if outcome.status == "duplicate":
        return _event_answer(200, str(outcome.event_id), _event_status(outcome.event_id)["status"])
    return _event_answer(202, str(outcome.event_id), "queued")


def _event_answer(status_code: int, event_id: str, status: str):
    return current_app.response_class(
        json.dumps({"id": event_id, "status": status}),
        status_code,
        {"Location": f"{blueprint.url_prefix}/{event_id}"},
        mimetype="application/json",
    )


def _kept_keys(keys: list[str]) -> dict[str, KeptKey]:
    """The log rows already holding these keys of the caller (a replay after the key's
    24 hours in Redis). Answered only to a caller not revoked since: the accept script
    checks that for everything else, atomically with the append."""
    kept = kept_keys(current_app.config["SETTINGS"].database_url, g.caller.user_id, keys)
    if kept:
        refuse_if_revoked()
    return kept


@blueprint.post("/batch", endpoint="record_usage_batch")
@superadmin_required
def accept_usage_batch():
    received_at = dt.datetime.now(dt.UTC)
    _no_idempotency_key_header()
    try:
        batch = BatchIn.model_validate(_json_object(_json_bytes()))
    except pydantic.ValidationError as error:
        raise ApiError(422, "The batch is invalid.", details=error_details(error)) from None
    results: list[dict] = [{} for _ in batch.events]
    candidates = []  # (index, event, fingerprint)
    for index, body in enumerate(batch.events):
        if not isinstance(body, dict):
            results[index] = _rejected(index, "Each event must be a JSON object.", None)
            continue
        try:
            validated = _validated(BatchEventIn, body, received_at)
        except ApiError as error:
            results[index] = _rejected(index, error.message, error.details)
            continue
        body_fingerprint = _fingerprint(body) if validated.idempotency_key else ""
        candidates.append((index, _accepted_event(validated, received_at, validated.idempotency_key, body_fingerprint)))
    unknown = catalog().unknown_references([event for _, event in candidates])
    kept = _kept_keys([event.idempotency_key for _, event in candidates if event.idempotency_key])
    queueable = []
    for (index, event), details in zip(candidates, unknown, strict=True):
        earlier = kept.get(event.idempotency_key) if event.idempotency_key else None
        if details:
            results[index] = _rejected(index, "The usage event refers to something that does not exist.", details)
        elif earlier is None:
            queueable.append((index, event, event.idempotency_fingerprint or ""))
        elif earlier.same_body(event.idempotency_fingerprint):
            results[index] = {"index": index, "id": str(earlier.event_id), "status": "duplicate"}
        else:
            results[index] = _rejected(index, "This idempotency_key was already used with a different body.", None)
    if queueable:
        try:
            outcomes = _queue([(event, body_fingerprint) for _, event, body_fingerprint in queueable])
        except OutcomeUnknown:
            for index, event, _ in queueable:
                results[index] = {"index": index, "id": str(event.id), "status": "unknown"}
            raise OutcomeUnknownAnswer([event.id for _, event, _ in queueable], results) from None
        for (index, _, _), outcome in zip(queueable, outcomes, strict=True):
            if outcome.status == "conflict":
                results[index] = _rejected(index, "This idempotency_key was already used with a different body.", None)
            else:
                results[index] = {"index": index, "id": str(outcome.event_id), "status": outcome.status}
    return jsonify(results=results)


def _rejected(index: int, message: str, details: list | None) -> dict:
    result = {"index": index, "status": "rejected", "error": message}
    if details:
        result["details"] = details
    return result


@blueprint.get("/<uuid:event_id>")
@superadmin_required
def usage_status(event_id: uuid.UUID):
    refuse_if_revoked()
    return jsonify(_event_status(event_id))


@blueprint.post("/<uuid:event_id>/void", endpoint="void_usage")
@superadmin_required
def void_usage(event_id: uuid.UUID):
    refuse_if_revoked()
    try:
        body = VoidIn.model_validate(_json_object(_json_bytes()))
    except pydantic.ValidationError as error:
        raise ApiError(422, "The void is invalid.", details=error_details(error)) from None
    g.event_ids = [str(event_id)]
    status_code, record = void_event(
        current_intake(), current_app.config["SETTINGS"].database_url, event_id, body.reason, str(g.caller.user_id)
    )
    return jsonify(record), status_code


def _event_status(event_id: uuid.UUID) -> dict:
    """The event's status record, or the 404 or 503 that answers for it."""
    try:
        status = event_status(current_intake(), current_app.config["SETTINGS"].database_url, event_id)
    except QueueUnavailable:
        raise _unavailable("The billing queue is unavailable, so this event's status is unknown. Retry later.") from None
    if status is None:
        raise ApiError(404, "No usage event with this id.")
    return status
