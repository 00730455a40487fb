"""Hostile and careless requests, one case per test, each with the answer it must get.

Every request gets the contract's answer: a JSON error (``{"error": ...}``, with
``details`` for a 422), never a 5xx, and nothing queued for a refusal. Text that a later
stage could not store or send is refused at the edge, so no accepted event can stop the
pipeline. The first cases are in-process (the Flask app); the ones about the HTTP
framing and about slow clients go through the real web process, as the Procfile runs it.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import uuid

import pytest
import requests
import sqlalchemy as sa

from bench.slow_clients import Dribblers, normal_caller, p99
from ingest_api import lookup_limits
from ingest_api.credentials import new_app_password
from local_stripe.webhooks import signature_header
from shared import db, models
from tests.support.api_caller import record_as_worker
from tests.support.billing import BATCH_URL, OMIT, URL
from tests.support.error_answers import assert_error
from tests.support.service_processes import GunicornProcess
from tests.support.timestamps import rfc3339


def post_raw(billing, data: bytes, **headers: str):
    return billing.client.post(URL, data=data, headers=billing.headers() | {"Content-Type": "application/json"} | headers)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- text a later stage cannot store: 422, for every string field, in both endpoints ----------

UNSTORABLE = {
    "nul-inside": "a\x00b",  # PostgreSQL text and jsonb refuse NUL (finding 1 of the issue)
    "nul-alone": "\x00",
    "escape-sequence": "\x1b[31mred",
    "del": "a\x7fb",
    "c1-control": "a\x85b",
    "noncharacter-bmp": "a\uffffb",
    "noncharacter-astral": "\U0010ffff",
}


@pytest.mark.parametrize("field", ["source", "model_name", "service_name"])
@pytest.mark.parametrize("text", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_unstorable_text_in_a_field_is_422_naming_it(billing, field, text):
    response = billing.post(billing.body(**{field: text}))

    body = assert_error(response, 422, fields=[field])
    assert "U+" in body["details"][0]["message"]
    billing.assert_nothing_queued()


def test_the_nul_body_of_the_issue_is_422_not_accepted(billing):
    data = json.dumps(billing.body(source="a\u0000b")).encode()  # "\u0000" as JSON writes it
    assert b"\\u0000" in data

    assert_error(post_raw(billing, data), 422, fields=["source"])
    billing.assert_nothing_queued()


def test_a_lone_surrogate_escape_in_source_is_422(billing):
    data = json.dumps(billing.body(source="x")).replace('"source": "x"', '"source": "a\\ud800b"').encode()

    assert_error(post_raw(billing, data), 422, fields=["source"])
    billing.assert_nothing_queued()


def test_unstorable_text_in_a_batch_refuses_only_that_event(billing):
    response = billing.post_batch([billing.body(), billing.body(source="a\x00b"), billing.body(service_name="x\x00")])

    assert response.status_code == 200
    first, second, third = response.get_json()["results"]
    assert first["status"] == "queued"
    assert (second["status"], [d["field"] for d in second["details"]]) == ("rejected", ["source"])
    assert (third["status"], [d["field"] for d in third["details"]]) == ("rejected", ["service_name"])
    assert [str(event.id) for event in billing.queued()] == [first["id"]]


def test_a_batch_idempotency_key_with_a_nul_is_refused(billing):
    response = billing.post_batch([billing.body(idempotency_key="key\x00")])

    (result,) = response.get_json()["results"]
    assert result["status"] == "rejected" and result["details"][0]["field"] == "idempotency_key"
    billing.assert_nothing_queued()


def test_a_nul_in_an_unknown_field_name_is_422_naming_it(billing):
    body = billing.body() | {"sour\x00ce": "x"}

    assert_error(billing.post(body), 422, fields=["sour\x00ce"])


ODD_BUT_STORABLE = {
    "emoji": "🎙️ transcription",
    "combining": "e\u0301\u0301\u0301",
    "right-to-left": "\u05e9\u05dc\u05d5\u05dd",
    "line-separator": "a\u2028b",
    "zero-width-joiner": "👩\u200d💻",
    "astral": "\U0001d11e",
}


@pytest.mark.parametrize("text", list(ODD_BUT_STORABLE.values()), ids=list(ODD_BUT_STORABLE))
def test_odd_but_storable_unicode_is_accepted_exactly(billing, text):
    response = billing.post(billing.body(source=text))

    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.source == text
    assert billing.get(event.id).get_json()["source"] == text


# --- structure and size -----------------------------------------------------------------------


def test_a_body_nested_30000_deep_is_400_not_500(billing):
    data = nested(30_000)
    assert len(data) < 64 * 1024

    assert_error(post_raw(billing, data), 400)
    assert_error(post_raw(billing, b'{"source": ' + data + b"}"), 400)
    billing.assert_nothing_queued()


def test_a_batch_nested_30000_deep_is_400_not_500(billing):
    response = billing.client.post(
        BATCH_URL, data=b'{"events": ' + nested(30_000) + b"}", headers=billing.headers() | {"Content-Type": "application/json"}
    )

    assert_error(response, 400)
    billing.assert_nothing_queued()


def test_a_field_nested_a_few_hundred_deep_is_422(billing):
    data = json.dumps(billing.body(source="x")).replace('"x"', nested(300).decode()).encode()

    assert_error(post_raw(billing, data), 422, fields=["source"])


# Python converts no integer of more than 4,300 digits (json raises ValueError): such a
# number was a 400 "not valid UTF-8 JSON" (finding 10 of issue 19), where it is valid JSON
# out of the field's range.
FIVE_THOUSAND_DIGITS = {"positive": "9" * 5000, "negative": "-" + "9" * 5000}
OUT_OF_RANGE = {"positive": "less than or equal to 2147483647", "negative": "greater than or equal to 0"}


def with_number(body: dict, field: str, digits: str) -> str:
    """``body`` as JSON with ``field``'s value written as ``digits``."""
    return json.dumps(body | {field: "NUMBER"}).replace('"NUMBER"', digits)


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
@pytest.mark.parametrize("sign", list(FIVE_THOUSAND_DIGITS))
def test_a_token_count_of_5000_digits_is_422_naming_it(billing, field, sign):
    response = post_raw(billing, with_number(billing.body(), field, FIVE_THOUSAND_DIGITS[sign]).encode())

    body = assert_error(response, 422, fields=[field])
    assert OUT_OF_RANGE[sign] in body["details"][0]["message"], body
    billing.assert_nothing_queued()


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
def test_a_token_count_of_5000_digits_in_a_batch_rejects_only_that_event(billing, field):
    events = [json.dumps(billing.body()), with_number(billing.body(), field, "9" * 5000), json.dumps(billing.body())]
    response = billing.client.post(
        BATCH_URL, data=f'{{"events": [{", ".join(events)}]}}'.encode(), headers=billing.headers() | {"Content-Type": "application/json"}
    )

    assert response.status_code == 200, response.get_json()
    first, second, third = response.get_json()["results"]
    assert (first["status"], third["status"]) == ("queued", "queued")
    assert (second["status"], [d["field"] for d in second["details"]]) == ("rejected", [field])
    assert len(billing.queued()) == 2


def test_five_thousand_unknown_fields_are_one_422(billing):
    body = billing.body() | {f"k{index}": 1 for index in range(5_000)}

    body = assert_error(billing.post(body), 422)
    assert len(body["details"]) == 5_000


def test_an_overlong_utf8_nul_is_400(billing):
    data = json.dumps(billing.body(source="aXb")).encode().replace(b"aXb", b"a\xc0\x80b")

    assert_error(post_raw(billing, data), 400)


def test_an_empty_object_is_422_naming_every_required_field(billing):
    body = assert_error(billing.post({}), 422)
    assert {d["field"] for d in body["details"]} >= {"user_id", "organization_id", "model_name"}


def test_a_token_count_as_a_huge_float_is_422(billing):
    assert_error(billing.post(billing.body(input_tokens=1e308)), 422, fields=["input_tokens"])


def test_a_missing_field_and_an_unstorable_one_are_both_named(billing):
    body = billing.body(source="\x00", service_name=OMIT)

    assert_error(billing.post(body), 422, fields=["source", "service_name"])


# --- references across organizations: 422 -------------------------------------------------------


def test_usage_of_another_organizations_user_billed_to_this_one_is_422(billing, factory):
    # The transcription job of a user of B, billed to A (finding 9 of issue 19).
    other_organization = factory.organization()
    user_of_other = factory.user()
    factory.membership(user_of_other, other_organization, "member")
    cross = billing.body(user_id=str(user_of_other.id))

    assert_error(billing.post(cross), 422, fields=["user_id"])
    response = billing.post_batch([cross, billing.body()])

    assert response.status_code == 200
    refused, accepted = response.get_json()["results"]
    assert (refused["status"], [d["field"] for d in refused["details"]]) == ("rejected", ["user_id"])
    assert [str(event.id) for event in billing.queued()] == [accepted["id"]]


# --- occurred_at: what PostgreSQL can store, and what Stripe will still count ------------------


def an_hour_ago_at(offset: dt.timedelta) -> str:
    """An hour ago, as RFC 3339 in the UTC offset ``offset``."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).astimezone(dt.timezone(offset)).isoformat(timespec="seconds")


def postgresql_stores(database_url: str, timestamp: str) -> bool:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT CAST(:t AS timestamptz)"), {"t": timestamp})
        return True
    except sa.exc.DataError:
        return False
    finally:
        engine.dispose()


OFFSETS = {
    "+15:59": dt.timedelta(hours=15, minutes=59),
    "-15:59": -dt.timedelta(hours=15, minutes=59),
    "+16:00": dt.timedelta(hours=16),
    "-16:00": -dt.timedelta(hours=16),
    "+23:59": dt.timedelta(hours=23, minutes=59),
    "-23:59": -dt.timedelta(hours=23, minutes=59),
}


@pytest.mark.parametrize("offset", list(OFFSETS.values()), ids=list(OFFSETS))
def test_the_edge_refuses_exactly_the_utc_offsets_postgresql_cannot_store(billing, settings, database_url, offset):
    """``2026-12-08T04:07:34+16:00`` was a 202, then failed: "time zone displacement out of
    range" (finding 1 of issue 19). PostgreSQL's timestamptz takes offsets up to 15:59."""
    occurred_at = an_hour_ago_at(offset)
    storable = postgresql_stores(database_url, occurred_at)
    assert storable == (abs(offset) < dt.timedelta(hours=16)), occurred_at

    single = billing.post(billing.body(occurred_at=occurred_at))
    (in_batch,) = billing.post_batch([billing.body(occurred_at=occurred_at)]).get_json()["results"]

    if storable:
        assert single.status_code == 202 and in_batch["status"] == "queued", (single.get_json(), in_batch)
        for event in billing.queued():
            record_as_worker(settings, billing, event)  # and PostgreSQL stores it
    else:
        body = assert_error(single, 422, fields=["occurred_at"])
        assert "-15:59 and +15:59" in body["details"][0]["message"], body
        assert in_batch["status"] == "rejected" and [d["field"] for d in in_batch["details"]] == ["occurred_at"]
        billing.assert_nothing_queued()


def test_an_event_35_days_old_less_seconds_is_422_not_accepted_to_fail_later(billing):
    """Accepted by the edge's 35 days, it failed "Too old for Stripe" at the reporter, whose
    limit is 35 days less 5 minutes (finding 2 of issue 19). The edge takes 34 days: the
    day between is the pipeline's margin."""
    occurred_at = rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(days=35) + dt.timedelta(seconds=10))

    body = assert_error(billing.post(billing.body(occurred_at=occurred_at)), 422, fields=["occurred_at"])
    assert body["details"][0]["message"] == "Must be at most 34 days old.", body
    (result,) = billing.post_batch([billing.body(occurred_at=occurred_at)]).get_json()["results"]
    assert result["status"] == "rejected" and [d["field"] for d in result["details"]] == ["occurred_at"]
    billing.assert_nothing_queued()


# --- headers ------------------------------------------------------------------------------------


def test_a_batch_with_an_idempotency_key_header_is_422_pointing_to_idempotency_key(billing):
    """The header was ignored on the batch endpoint, so a retried batch was billed twice
    (finding 7 of issue 19)."""
    response = billing.client.post(
        BATCH_URL, json={"events": [billing.body()]}, headers=billing.headers(idempotency_key="batch-1")
    )

    body = assert_error(response, 422, fields=["Idempotency-Key"])
    assert "idempotency_key" in body["details"][0]["message"], body
    billing.assert_nothing_queued()


@pytest.mark.parametrize("key", ["K ", " K", " "], ids=["trailing-space", "leading-space", "a-space"])
def test_a_key_with_a_space_at_either_end_is_refused_on_both_endpoints(billing, key):
    """HTTP strips the spaces around a header's value, so "K " was K in a header and "K "
    in a batch (finding 7 of issue 19): no key begins or ends with a space."""
    body = assert_error(billing.post(idempotency_key=key), 422, fields=["Idempotency-Key"])
    assert "neither begin nor end with a space" in body["details"][0]["message"], body
    (result,) = billing.post_batch([billing.body() | {"idempotency_key": key}]).get_json()["results"]
    assert result["status"] == "rejected" and [d["field"] for d in result["details"]] == ["idempotency_key"]
    assert "neither begin nor end with a space" in result["details"][0]["message"], result
    billing.assert_nothing_queued()



@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * 8000,
        "Bearer app_a7_" + "A" * 8000,
        "Bearer a b",
        "Bearer\tapp_a7_x",
        "Basic dXNlcjpwYXNz",
        "Bearer app_a7_\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    ],
    ids=["huge", "huge-app-password", "two-tokens", "tab", "basic", "latin-1", "alg-none"],
)
def test_odd_authorization_headers_are_401(billing, authorization):
    response = billing.client.post(URL, json=billing.body(), headers={"Authorization": authorization})

    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    billing.assert_nothing_queued()


def test_the_bearer_scheme_is_case_insensitive(billing):
    response = billing.client.post(URL, json=billing.body(), headers={"Authorization": f"bEaReR {billing.app_password}"})

    assert response.status_code == 202


# --- the void: hostile reasons, bodies and ids; a refusal writes nothing -----------------------

VOID_URL = URL + "/{event_id}/void"


@pytest.fixture
def recorded(billing, settings):
    """An event recorded and never sent to Stripe: a valid reason voids it at once (200),
    so whatever is refused below is refused for what was sent, not for the event."""
    event = billing.event()
    record_as_worker(settings, billing, event)
    return event


def post_void(billing, event_id, data: bytes, content_type: str | None = "application/json"):
    headers = billing.headers() | ({"Content-Type": content_type} if content_type else {})
    return billing.client.post(VOID_URL.format(event_id=event_id), data=data, headers=headers)


def assert_nothing_voided(settings, event) -> None:
    with db.transaction(settings.database_url) as session:
        assert session.scalars(sa.select(models.UsageVoid)).all() == []
        assert session.get(models.UserBillableRequestLog, event.id).status == models.UsageStatus.RECORDED


def reason_json(escaped: str) -> bytes:
    """A body whose reason is ``escaped`` as written in JSON (escapes kept as they are)."""
    return b'{"reason": "' + escaped.encode() + b'"}'


UNSTORABLE_REASONS = {
    "nul-escaped": reason_json("sent\\u0000twice"),
    "nul-alone": reason_json("\\u0000"),
    "escape-sequence": reason_json("\\u001b[31mred"),
    "tab": reason_json("sent\\ttwice"),
    "c1-control": reason_json("a\\u0085b"),
    "noncharacter": reason_json("a\\uffffb"),
}


@pytest.mark.parametrize("data", list(UNSTORABLE_REASONS.values()), ids=list(UNSTORABLE_REASONS))
def test_a_reason_that_cannot_be_stored_is_422_naming_it(billing, settings, recorded, data):
    body = assert_error(post_void(billing, recorded.id, data), 422, fields=["reason"])
    assert "U+" in body["details"][0]["message"], body
    assert_nothing_voided(settings, recorded)


LONE_SURROGATES = {
    "high": reason_json("sent \\ud800 twice"),
    "low": reason_json("\\udfff"),
    "reversed-pair": reason_json("\\udd1e\\ud834"),
}


@pytest.mark.parametrize("data", list(LONE_SURROGATES.values()), ids=list(LONE_SURROGATES))
def test_a_reason_with_a_lone_surrogate_is_422_naming_it(billing, settings, recorded, data):
    """UTF-8 (and so PostgreSQL) cannot encode one; JSON's escapes can write it."""
    assert_error(post_void(billing, recorded.id, data), 422, fields=["reason"])
    assert_nothing_voided(settings, recorded)


BLANK_REASONS = {"spaces": " " * 20, "no-break-spaces": "\u00a0\u00a0", "ideographic-space": "\u3000", "line-separator": "\u2028"}


@pytest.mark.parametrize("reason", list(BLANK_REASONS.values()), ids=list(BLANK_REASONS))
def test_a_reason_of_only_whitespace_is_422(billing, settings, recorded, reason):
    body = assert_error(post_void(billing, recorded.id, json.dumps({"reason": reason}).encode()), 422, fields=["reason"])
    assert body["details"][0]["message"] == "Must not be only spaces.", body
    assert_nothing_voided(settings, recorded)


LONG_REASONS = {"ascii": "x", "astral": "\U0001d11e", "combining-mark": "\u0301"}


@pytest.mark.parametrize("character", list(LONG_REASONS.values()), ids=list(LONG_REASONS))
def test_a_reason_of_501_characters_is_422_and_of_500_is_voided(billing, settings, recorded, character):
    """Characters are code points: an astral one (a surrogate pair in the JSON, two UTF-16
    units, four UTF-8 bytes) is one, as PostgreSQL counts it."""
    too_long = json.dumps({"reason": "a" + character * 500}).encode()  # \u escapes: pairs for astral
    assert_error(post_void(billing, recorded.id, too_long), 422, fields=["reason"])
    assert_nothing_voided(settings, recorded)

    answer = post_void(billing, recorded.id, json.dumps({"reason": character * 500}).encode())

    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["void"]["reason"] == character * 500


NOT_A_REASON = {
    "missing": b"{}",
    "null": b'{"reason": null}',
    "number": b'{"reason": 5}',
    "5000-digits": b'{"reason": ' + b"9" * 5000 + b"}",
    "true": b'{"reason": true}',
    "array": b'{"reason": ["sent twice"]}',
    "object": b'{"reason": {"text": "sent twice"}}',
    "nested-300-deep": b'{"reason": ' + nested(300) + b"}",
    "empty": b'{"reason": ""}',
    "unknown-field": b'{"reason": "sent twice", "reasons": "x"}',
    "nul-in-a-field-name": b'{"reason": "sent twice", "rea\\u0000son": "x"}',
}


@pytest.mark.parametrize("data", list(NOT_A_REASON.values()), ids=list(NOT_A_REASON))
def test_a_body_without_one_valid_reason_is_422(billing, settings, recorded, data):
    assert_error(post_void(billing, recorded.id, data), 422)
    assert_nothing_voided(settings, recorded)


NOT_A_JSON_OBJECT = {
    "nested-30000-deep": nested(30_000),
    "reason-nested-30000-deep": b'{"reason": ' + nested(30_000) + b"}",
    "array": b'["sent twice"]',
    "string": b'"sent twice"',
    "number": b"5",
    "null": b"null",
    "empty": b"",
    "truncated": b'{"reason": "sent twi',
    "nan": b'{"reason": NaN}',
    "latin-1": '{"reason": "d\u00e9j\u00e0 vu"}'.encode("latin-1"),
    "utf-16": '{"reason": "sent twice"}'.encode("utf-16"),
    "overlong-nul": b'{"reason": "a\xc0\x80b"}',
}


@pytest.mark.parametrize("data", list(NOT_A_JSON_OBJECT.values()), ids=list(NOT_A_JSON_OBJECT))
def test_a_body_that_is_not_a_json_object_is_400(billing, settings, recorded, data):
    assert len(data) < 64 * 1024
    assert_error(post_void(billing, recorded.id, data), 400)
    assert_nothing_voided(settings, recorded)


@pytest.mark.parametrize(
    "data",
    [json.dumps({"reason": "x" * 70_000}).encode(), b'{"reason": "sent twice"}' + b" " * (64 * 1024)],
    ids=["huge-reason", "padded-valid-body"],
)
def test_a_void_body_over_64_kib_is_413(billing, settings, recorded, data):
    assert_error(post_void(billing, recorded.id, data), 413)
    assert_nothing_voided(settings, recorded)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx",
     "application/merge-patch+json"],
    ids=["none", "text", "form", "multipart", "jsonx", "merge-patch"],
)
def test_a_void_that_is_not_application_json_is_415(billing, settings, recorded, content_type):
    assert_error(post_void(billing, recorded.id, b'{"reason": "sent twice"}', content_type), 415)
    assert_nothing_voided(settings, recorded)


@pytest.mark.parametrize(
    "event_id",
    ["not-a-uuid", "batch", "0", "{0b6d5c1e-3f0a-4c47-9a53-4f1f0c2b8d10}", "0b6d5c1e3f0a4c479a534f1f0c2b8d10x",
     "0b6d5c1e-3f0a-4c47-9a53-4f1f0c2b8d1", "%00", "..%2F..%2Fhealthz", "%F0%9F%8E%99"],
    ids=["word", "batch", "zero", "braces", "too-long", "too-short", "nul", "dot-dot", "emoji"],
)
def test_a_void_of_a_path_that_is_no_uuid_is_a_json_404(billing, settings, recorded, event_id):
    assert_error(post_void(billing, event_id, b'{"reason": "sent twice"}'), 404)
    assert_nothing_voided(settings, recorded)


def test_a_void_of_an_unknown_uuid_is_404_and_writes_nothing(billing, settings, recorded):
    assert_error(post_void(billing, uuid.uuid4(), b'{"reason": "sent twice"}'), 404)
    assert_nothing_voided(settings, recorded)


def test_a_void_with_a_wrong_credential_is_401_and_writes_nothing(billing, settings, recorded):
    response = billing.client.post(
        VOID_URL.format(event_id=recorded.id), json={"reason": "sent twice"}, headers={"Authorization": "Bearer app_a7_x"}
    )

    assert_error(response, 401)
    assert_nothing_voided(settings, recorded)


def test_the_void_of_a_recorded_event_in_uppercase_is_the_same_void(billing, settings, recorded):
    answer = post_void(billing, str(recorded.id).upper(), b'{"reason": "sent twice"}')

    assert answer.status_code == 200 and answer.get_json()["id"] == str(recorded.id), answer.get_json()


# --- the usage query: hostile parameters, each a JSON 422 naming it -------------------------------

USAGE_URL = "/api/billing/usage"


def ask_usage(billing, query: str):
    """GET the usage with ``query`` as the raw query string (percent-escapes kept as they
    are); the organization is the billing world's unless the query names one."""
    if "organization_id=" not in query:
        query = f"organization_id={billing.organization.id}&{query}"
    return billing.client.get(f"{USAGE_URL}?{query}", headers=billing.headers())


WINDOW = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"
HOSTILE_USAGE_QUERIES = {
    # text that is no value of any parameter
    "nul-organization": ("organization_id=%00", ["organization_id"]),
    "nul-in-a-time": ("from=2026-11-01T00:00:00Z%00", ["from"]),
    "nul-group": ("group_by=day%00", ["group_by.0"]),
    "nul-parameter-name": ("fr%00om=2026-11-01T00:00:00Z", ["fr\x00om"]),
    "lone-surrogate-utf8": ("organization_id=%ED%A0%80", ["organization_id"]),
    "lone-surrogate-group": ("group_by=%ED%B3%BF", ["group_by.0"]),
    "invalid-utf8": ("to=%C0%80", ["to"]),
    "empty-name": ("=x", [""]),
    "empty-group": ("group_by=", ["group_by.0"]),
    # the organization
    "not-a-uuid": ("organization_id=not-a-uuid", ["organization_id"]),
    "a-number": ("organization_id=0", ["organization_id"]),
    "uuid-in-braces": ("organization_id=%7B0b6d5c1e-3f0a-4c47-9a53-4f1f0c2b8d10%7D", ["organization_id"]),
    "unknown-uuid": ("organization_id=0b6d5c1e-3f0a-4c47-9a53-4f1f0c2b8d10", ["organization_id"]),
    "huge-organization": ("organization_id=" + "a" * 100_000, ["organization_id"]),
    "no-organization": ("organization_id", ["organization_id"]),  # a name without a value
    # times
    "year-0": ("from=0000-01-01T00:00:00Z", ["from"]),
    "leap-second": ("from=9999-12-01T00:00:00Z&to=9999-12-31T23:59:60Z", ["to"]),
    "past-year-9999-in-utc": ("from=9999-12-01T00:00:00Z&to=9999-12-31T23:59:59-15:59", ["to"]),
    "before-year-1-in-utc": ("from=0001-01-01T00:00:00%2B15:59&to=0001-01-02T00:00:00Z", ["from"]),
    "no-offset": ("from=2026-11-01T00:00:00", ["from"]),
    "a-date-alone": ("from=2026-11-01", ["from"]),
    "no-seconds": ("from=2026-11-01T00:00Z", ["from"]),
    "epoch-seconds": ("from=1730419200", ["from"]),
    "epoch-milliseconds": ("from=1730419200000", ["from"]),
    "negative-epoch": ("to=-1", ["to"]),
    "exponent": ("to=1e10", ["to"]),
    "february-30": ("from=2026-02-30T00:00:00Z", ["from"]),
    "hour-24": ("to=2026-11-01T24:00:00Z", ["to"]),
    "offset-16-hours": ("from=2026-11-01T00:00:00%2B16:00", ["from"]),
    "a-space-for-plus": ("from=2026-11-01T00:00:00 01:00", ["from"]),  # "+" unescaped is a space
    "huge-time": ("from=" + "9" * 100_000, ["from"]),
    "backwards": ("from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z", ["to"]),
    "empty-window": ("from=2026-11-01T00:00:00Z&to=2026-11-01T00:00:00Z", ["to"]),
    "a-year": ("from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z", ["to"]),
    # repeats and unknowns
    "organization-twice": ("organization_id={org}&organization_id={org}", ["organization_id"]),
    "from-twice-the-same": ("from=2026-11-01T00:00:00Z&from=2026-11-01T00:00:00Z", ["from"]),
    "to-twice": ("to=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z", ["to"]),
    "a-group-twice": ("group_by=day&group_by=day", ["group_by"]),
    "commas": ("group_by=model_name,day", ["group_by.0"]),
    "10000-groups": ("&".join(["group_by=day"] * 10_000), ["group_by"]),
    "10000-unknown-groups": ("&".join(f"group_by=g{n}" for n in range(10_000)), ["group_by"]),
    "unknown-parameter": ("since=2026-11-01T00:00:00Z", ["since"]),
    "camel-case": ("groupBy=day", ["groupBy"]),
    "array-brackets": ("group_by[]=day", ["group_by[]"]),
}


@pytest.mark.parametrize(("query", "fields"), list(HOSTILE_USAGE_QUERIES.values()), ids=list(HOSTILE_USAGE_QUERIES))
def test_a_hostile_usage_query_is_a_json_422_naming_the_parameter(billing, query, fields):
    body = assert_error(ask_usage(billing, query.replace("{org}", str(billing.organization.id))), 422, fields=fields)
    assert all(detail["message"].endswith(".") for detail in body["details"]), body


def test_5000_unknown_parameters_are_one_422_naming_each(billing):
    body = assert_error(ask_usage(billing, WINDOW + "&" + "&".join(f"k{n}=1" for n in range(5_000))), 422)
    assert len(body["details"]) == 5_000


ODD_BUT_VALID_USAGE_QUERIES = {
    "lowercase-t-and-z": "from=2026-11-01t00:00:00z&to=2026-12-01T00:00:00Z",
    "offset-15-59": "from=2026-11-01T15:59:00%2B15:59&to=2026-12-01T00:00:00Z",
    "a-long-fraction": "from=2026-11-01T00:00:00." + "1" * 10_000 + "Z&to=2026-12-01T00:00:00Z",
    "year-1": "from=0001-01-01T00:00:00Z&to=0001-02-01T00:00:00Z",
    "year-9999": "from=9999-12-01T00:00:00Z&to=9999-12-31T23:59:59.999999Z",
    "uppercase-uuid": "organization_id={ORG}&" + WINDOW,
    "every-group": WINDOW + "&" + "&".join(f"group_by={g}" for g in ("hour", "day", "user_id", "source", "service_name", "model_name")),
}


@pytest.mark.parametrize("query", list(ODD_BUT_VALID_USAGE_QUERIES.values()), ids=list(ODD_BUT_VALID_USAGE_QUERIES))
def test_an_odd_but_valid_usage_query_is_answered(billing, query):
    response = ask_usage(billing, query.replace("{ORG}", str(billing.organization.id).upper()))

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["organization_id"] == str(billing.organization.id)


def test_the_usage_path_with_another_method_or_a_slash_is_a_json_405_or_404(billing):
    assert_error(billing.client.post(USAGE_URL, json={}, headers=billing.headers()), 405)
    assert_error(billing.client.get(USAGE_URL + "/", headers=billing.headers()), 404)
    assert_error(billing.client.get(USAGE_URL + "/x", headers=billing.headers()), 404)


def test_a_hostile_usage_query_without_a_credential_is_401_first(billing):
    response = billing.client.get(f"{USAGE_URL}?organization_id=%00&group_by=x")

    assert_error(response, 401)


# --- Stripe's webhook: a body its signature covers that is not a thin event ---------------------

WEBHOOK_SECRET = "whsec_test_hostile"
THIN_EVENT = {"id": "evt_test_x", "object": "v2.core.event", "type": "v1.billing.meter.no_meter_found", "created": "2026-11-29T00:00:00.000Z"}
NOT_THIN_EVENTS = {
    "array": [1, 2],  # the SDK's parser raised AttributeError: a 500 (finding 5 of the issue)
    "string": "x",
    "number": 5,
    "null": None,
    "empty-object": {},
    "no-id": {k: v for k, v in THIN_EVENT.items() if k != "id"},
    "no-type": {k: v for k, v in THIN_EVENT.items() if k != "type"},
    "id-a-number": THIN_EVENT | {"id": 5},
    "id-a-list": THIN_EVENT | {"id": ["evt_test_x"]},
    "id-empty": THIN_EVENT | {"id": ""},
    "id-a-path": THIN_EVENT | {"id": "evt_test_x/../../v1/customers"},
    "type-a-number": THIN_EVENT | {"type": 7},
    "a-snapshot-event": THIN_EVENT | {"object": "event"},
}


@pytest.mark.parametrize("payload", list(NOT_THIN_EVENTS.values()), ids=list(NOT_THIN_EVENTS))
def test_a_signed_webhook_body_that_is_not_a_thin_event_is_400_and_records_nothing(reconfigure, session, payload):
    _, app = reconfigure(stripe_webhook_secret=WEBHOOK_SECRET)
    body = json.dumps(payload)
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature_header(body, WEBHOOK_SECRET, int(time.time()))}

    response = app.test_client().post("/api/stripe/events", data=body, headers=headers)

    assert_error(response, 400)
    assert session.scalar(sa.select(sa.func.count()).select_from(models.StripeEvent)) == 0


def test_a_signed_webhook_nested_30000_deep_is_400(reconfigure):
    _, app = reconfigure(stripe_webhook_secret=WEBHOOK_SECRET)
    body = nested(30_000).decode()
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature_header(body, WEBHOOK_SECRET, int(time.time()))}

    assert_error(app.test_client().post("/api/stripe/events", data=body, headers=headers), 400)


# --- wrong credentials in bulk cannot load the database ---------------------------------------


def _post_from(billing, address: str, token: str):
    return billing.client.post(
        URL, json=billing.body(), headers={"Authorization": f"Bearer {token}"}, environ_base={"REMOTE_ADDR": address}
    )


def _wrong_app_password() -> str:
    return new_app_password().token  # well-formed, never stored


def test_a_burst_of_new_wrong_app_passwords_from_one_address_costs_a_bounded_number_of_queries(
    billing, factory, statements
):
    # Finding 11 of issue 19: 300 wrong App Passwords were 300 PostgreSQL lookups.
    started = time.monotonic()
    answers = [_post_from(billing, "10.0.0.66", _wrong_app_password()) for _ in range(300)]
    elapsed = time.monotonic() - started

    assert len(statements) <= lookup_limits.PER_SOURCE_BURST + elapsed * lookup_limits.PER_SOURCE_PER_SECOND + 1
    assert [a.status_code for a in answers[: lookup_limits.PER_SOURCE_BURST]] == [401] * lookup_limits.PER_SOURCE_BURST
    limited = answers[-1]
    assert_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # Another address, with a credential this process never saw: not refused.
    newcomer = factory.app_password(billing.caller, name="newcomer")
    assert _post_from(billing, "10.0.0.7", newcomer).status_code == 202
    assert len(billing.queued()) == 1


def test_the_same_wrong_app_password_sent_300_times_is_one_query_and_always_401(billing, statements):
    wrong = _wrong_app_password()

    answers = [_post_from(billing, "10.0.0.66", wrong) for _ in range(300)]

    assert {a.status_code for a in answers} == {401}
    assert len(statements) == 1


def test_a_burst_from_many_addresses_is_bounded_and_a_caller_at_work_is_not_refused(billing, app, statements):
    app.extensions["caller_cache"].ttl_seconds = 0  # every request of the caller is looked up
    assert billing.post().status_code == 202
    statements.clear()

    started = time.monotonic()
    answers = [_post_from(billing, f"10.1.{n // 250}.{n % 250}", _wrong_app_password()) for n in range(400)]
    elapsed = time.monotonic() - started

    assert len(statements) <= lookup_limits.OVERALL_BURST + elapsed * lookup_limits.OVERALL_PER_SECOND + 1
    assert answers[-1].status_code == 429
    assert billing.post().status_code == 202  # verified before the burst: still looked up


# --- the HTTP framing, through the real web process ---------------------------------------------


@pytest.fixture(scope="module")
def web_process(tmp_path_factory, database_url, broker_url, stripe_server):
    """The web process exactly as the Procfile runs it (shared/gunicorn_config.py, its workers)."""
    from shared.config import Settings
    from tests.support.billing import TEST_JWT_SECRET

    settings = Settings(
        database_url=database_url, broker_url=broker_url, jwt_secret=TEST_JWT_SECRET, stripe_api_key="sk_test_x",
        stripe_api_base=stripe_server.url, stripe_meter_events_base=stripe_server.url,
        stripe_meter_event_name="agent700_cost", stripe_value_decimals=6, flower_basic_auth=None, port=0,
    )
    web = GunicornProcess(settings, stripe_server.url, tmp_path_factory.mktemp("web"), workers=None).start()
    yield web
    web.stop()


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            if b"\r\n\r\n" in received and len(body) >= int(headers.get(b"Content-Length", b"0")):
                break
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    headers = {k.decode().lower(): v.decode() for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)}
    return status, headers, body


def assert_json_4xx(status: int, headers: dict, body: bytes) -> dict:
    assert 400 <= status < 500, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    document = json.loads(body)
    assert set(document) <= {"error", "details"} and document["error"].endswith("."), document
    return document


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /api/billing/external-usage HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /api/billing/external-usage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /api/billing/external-usage HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/billing/usage?" + b"&".join([b"group_by=day"] * 10_000) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["bad-version", "garbage", "header-too-large", "unknown-transfer-coding", "two-content-lengths", "uri-too-long",
         "usage-query-too-long"],
)
def test_a_request_the_server_itself_refuses_gets_a_json_4xx(web_process, request_bytes):
    assert_json_4xx(*raw_exchange(web_process.port, request_bytes))


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_a_declared_body_over_64_kib_is_413_without_reading_it(web_process, billing):
    request = (
        f"POST /api/billing/external-usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {billing.app_password}\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{"
    ).encode()

    status, headers, body = raw_exchange(web_process.port, request)

    assert status == 413 and json.loads(body)["error"]


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_deep_nesting_over_http_is_400(web_process, billing):
    response = requests.post(
        f"{web_process.url}{URL}", data=nested(30_000), headers=billing.headers() | {"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 400 and response.json()["error"]


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_a_header_key_and_a_batch_key_of_the_same_text_are_the_same_key(web_process, billing):
    """The server strips a header's surrounding spaces: "K " sent is K received, and K is
    the batch's "K" (a batch's "K " is refused, above)."""
    body = billing.body()
    single = requests.post(f"{web_process.url}{URL}", json=body, headers=billing.headers(idempotency_key="call-7 "), timeout=10)
    assert single.status_code == 202, single.text

    batch = requests.post(
        f"{web_process.url}{BATCH_URL}", json={"events": [body | {"idempotency_key": "call-7"}]}, headers=billing.headers(), timeout=10
    )

    assert batch.json()["results"] == [{"index": 0, "id": single.json()["id"], "status": "duplicate"}], batch.text


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_a_void_over_http_refuses_a_huge_declared_or_chunked_body_deep_nesting_and_a_bad_path(web_process, billing, settings):
    event = billing.event()
    record_as_worker(settings, billing, event)
    path = VOID_URL.format(event_id=event.id)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {billing.app_password}\r\nContent-Type: application/json\r\n"

    status, _, body = raw_exchange(web_process.port, (head + "Content-Length: 10000000\r\n\r\n{").encode())
    assert status == 413 and json.loads(body)["error"]

    def chunks():  # no Content-Length: read until it is over 64 KiB
        yield b'{"reason": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    headers = billing.headers() | {"Content-Type": "application/json"}
    chunked = requests.post(f"{web_process.url}{path}", data=chunks(), headers=headers, timeout=10)
    assert chunked.status_code == 413 and chunked.json()["error"], chunked.text
    deep = requests.post(f"{web_process.url}{path}", data=nested(30_000), headers=headers, timeout=10)
    assert deep.status_code == 400 and deep.json()["error"], deep.text
    assert_json_4xx(*raw_exchange(web_process.port, head.replace(str(event.id), "%ZZ\xff").encode("latin-1") + b"Content-Length: 2\r\n\r\n{}"))
    with db.transaction(settings.database_url) as session:
        assert session.scalars(sa.select(models.UsageVoid)).all() == []

    voided = requests.post(f"{web_process.url}{path}", json={"reason": "sent twice"}, headers=billing.headers(), timeout=10)
    assert voided.status_code == 200 and voided.json()["status"] == "voided", voided.text


# --- slow clients cannot starve normal callers ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_a_hundred_connections_dribbling_headers_for_a_minute_do_not_starve_normal_callers(web_process, billing):
    """Finding 2: with sync workers, 20 such connections left every request (``/healthz``
    too) unanswered for a minute, and gunicorn killed all its workers, twice. Longer than
    the worker timeout (30 s), so a worker that such a client held would be killed."""
    with Dribblers(web_process.port, 100, every=5):
        calls = normal_caller(web_process.url, billing.body(), billing.headers(), seconds=60)

    assert calls.failures == []
    latencies = calls.latencies
    assert len(latencies) > 300
    assert p99(latencies) < 0.1, f"p99 {p99(latencies) * 1000:.1f} ms over {len(latencies)} requests"
    assert web_process.alive()
    assert "WORKER TIMEOUT" not in web_process.log_tail(500)


@pytest.mark.slow
@pytest.mark.usefixtures("committed_database")  # the web process reads its data
def test_authenticated_clients_stalling_mid_body_do_not_starve_normal_callers(web_process, billing):
    with Dribblers(web_process.port, 50, every=2, body=True, authorization=f"Bearer {billing.app_password}"):
        calls = normal_caller(web_process.url, billing.body(), billing.headers(), seconds=15)

    assert calls.failures == []
    latencies = calls.latencies
    assert p99(latencies) < 0.1, f"p99 {p99(latencies) * 1000:.1f} ms over {len(latencies)} requests"
    assert all(uuid.UUID(str(event.id)) for event in billing.queued())
