"""The body of POST /api/billing/external-usage, field by field, as the contract's table
states it, and the request's framing (JSON, Content-Type, size, Idempotency-Key).

Every refusal answers ``{"error": "<sentence>"}`` (+ ``details`` naming each field for a
422) and queues nothing; every acceptance queues exactly the event that was sent.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import uuid

import pytest

from tests.support.billing import OMIT, URL
from tests.support.error_answers import assert_error
from tests.support.timestamps import now, rfc3339

REQUIRED = ["user_id", "organization_id", "model_name", "input_tokens", "output_tokens", "service_name"]
MAX_INT32 = 2_147_483_647


def post_raw(billing, data: bytes, content_type: str | None = "application/json", **kwargs):
    headers = billing.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    return billing.client.post(URL, data=data, headers=headers, **kwargs)


# --- fields: 422 naming the field -----------------------------------------------------

def at_run_time(changes: dict) -> dict:
    """Values relative to now are written as functions: computed when the test runs, not
    when the module is collected (minutes earlier in a long run)."""
    return {field: value() if callable(value) else value for field, value in changes.items()}


INVALID_FIELDS = [
    # each required field missing
    *[(f"missing-{field}", {field: OMIT}, [field]) for field in REQUIRED],
    # token counts: integers only, 0 to 2^31-1
    *[
        (f"{field}-{label}", {field: value}, [field])
        for field in ("input_tokens", "output_tokens")
        for label, value in [
            ("numeric-string", "12"),
            ("float", 12.0),
            ("fraction", 12.5),
            ("true", True),
            ("false", False),
            ("null", None),
            ("list", []),
            ("object", {}),
            ("negative", -1),
            ("above-int32", MAX_INT32 + 1),
            ("huge", 10**30),
        ]
    ],
    # UUIDs: strings in UUID form
    *[
        (f"{field}-{label}", {field: value}, [field])
        for field in ("user_id", "organization_id")
        for label, value in [
            ("number", 12345),
            ("null", None),
            ("list", []),
            ("malformed", "not-a-uuid"),
            ("truncated", str(uuid.UUID(int=7))[:-1]),
            ("bad-hex", "g" + str(uuid.UUID(int=7))[1:]),
            ("empty", ""),
        ]
    ],
    # names: non-empty strings
    *[
        (f"{field}-{label}", {field: value}, [field])
        for field in ("model_name", "service_name")
        for label, value in [("number", 12), ("null", None), ("true", True), ("list", []), ("empty", "")]
    ],
    # source: 1 to 64 characters
    ("source-empty", {"source": ""}, ["source"]),
    ("source-65-chars", {"source": "s" * 65}, ["source"]),
    ("source-number", {"source": 1}, ["source"]),
    # occurred_at: RFC 3339 with an offset PostgreSQL can store, within [-34 days, +5 minutes]
    ("occurred_at-naive", {"occurred_at": now().replace(tzinfo=None).isoformat(timespec="seconds")}, ["occurred_at"]),
    ("occurred_at-words", {"occurred_at": "yesterday"}, ["occurred_at"]),
    ("occurred_at-date-only", {"occurred_at": now().date().isoformat()}, ["occurred_at"]),
    ("occurred_at-us-format", {"occurred_at": now().strftime("%m/%d/%Y %H:%M:%S")}, ["occurred_at"]),
    ("occurred_at-unix-string", {"occurred_at": str(int(time.time()))}, ["occurred_at"]),
    ("occurred_at-no-seconds", {"occurred_at": now().strftime("%Y-%m-%dT%H:%MZ")}, ["occurred_at"]),
    ("occurred_at-offset-without-colon", {"occurred_at": now().strftime("%Y-%m-%dT%H:%M:%S+0000")}, ["occurred_at"]),
    ("occurred_at-hour-25", {"occurred_at": now().strftime("%Y-%m-%dT25:%M:%SZ")}, ["occurred_at"]),
    ("occurred_at-number", {"occurred_at": int(time.time())}, ["occurred_at"]),
    ("occurred_at-36-days-old", {"occurred_at": lambda: rfc3339(now() - dt.timedelta(days=36))}, ["occurred_at"]),
    ("occurred_at-a-minute-over-34-days-old", {"occurred_at": lambda: rfc3339(now() - dt.timedelta(days=34, minutes=1))}, ["occurred_at"]),
    ("occurred_at-6-minutes-ahead", {"occurred_at": lambda: rfc3339(now() + dt.timedelta(minutes=6))}, ["occurred_at"]),
    # nothing but the table's fields
    ("unknown-field", {"agent_id": str(uuid.uuid4())}, ["agent_id"]),
    ("idempotency_key-in-single-body", {"idempotency_key": "k-1"}, ["idempotency_key"]),
    # several problems: each listed
    (
        "several",
        {"user_id": OMIT, "input_tokens": "12", "source": "", "colour": "blue"},
        ["user_id", "input_tokens", "source", "colour"],
    ),
]


@pytest.mark.parametrize("changes, fields", [c[1:] for c in INVALID_FIELDS], ids=[c[0] for c in INVALID_FIELDS])
def test_an_invalid_field_is_422_naming_it(billing, changes, fields):
    response = billing.post(billing.body(**at_run_time(changes)))
    assert_error(response, 422, fields=fields)
    billing.assert_nothing_queued()


VALID_FIELDS = [
    ("tokens-max", {"input_tokens": MAX_INT32, "output_tokens": MAX_INT32}),
    ("tokens-zero", {"input_tokens": 0, "output_tokens": 0}),
    ("source-1-char", {"source": "s"}),
    ("source-64-chars", {"source": "s" * 64}),
    ("occurred_at-a-minute-under-34-days-old", {"occurred_at": lambda: rfc3339(now() - dt.timedelta(days=34) + dt.timedelta(minutes=1))}),
    ("occurred_at-4-minutes-ahead", {"occurred_at": lambda: rfc3339(now() + dt.timedelta(minutes=4))}),
    ("occurred_at-other-offset", {"occurred_at": (now() - dt.timedelta(hours=3)).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()}),
    ("occurred_at-fraction", {"occurred_at": (now() - dt.timedelta(seconds=30)).isoformat(timespec="microseconds")}),
    ("occurred_at-null", {"occurred_at": None}),
]


@pytest.mark.parametrize("changes", [c[1] for c in VALID_FIELDS], ids=[c[0] for c in VALID_FIELDS])
def test_a_valid_body_is_queued_as_sent(billing, changes):
    body = billing.body(**at_run_time(changes))
    response = billing.post(body)
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert response.get_json() == {"id": str(event.id), "status": "queued"}
    for field in REQUIRED + ["source"]:
        if field in body:
            assert str(getattr(event, field)) == str(body[field]), field
    if body.get("occurred_at") is not None:
        assert event.occurred_at == dt.datetime.fromisoformat(body["occurred_at"])


def test_source_defaults_to_external_api_and_occurred_at_to_the_time_of_receipt(billing):
    before = now()
    response = billing.post(billing.body())
    after = now()
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.source == "external_api"
    assert before <= event.occurred_at <= after
    assert event.occurred_at == event.received_at


# --- references: 422 naming each unknown one --------------------------------------------


@pytest.mark.parametrize(
    "changes, fields",
    [
        ({"service_name": "translation"}, ["service_name"]),
        ({"model_name": "gpt-unpriced"}, ["model_name"]),
        ({"user_id": str(uuid.uuid4())}, ["user_id"]),
        ({"organization_id": str(uuid.uuid4())}, ["organization_id"]),
        (
            {"service_name": "x", "model_name": "y", "user_id": str(uuid.uuid4()), "organization_id": str(uuid.uuid4())},
            ["service_name", "model_name", "user_id", "organization_id"],
        ),
    ],
    ids=["service", "model", "user", "organization", "all-four"],
)
def test_an_unknown_reference_is_422_naming_it(billing, changes, fields):
    assert_error(billing.post(billing.body(**changes)), 422, fields=fields)
    billing.assert_nothing_queued()


def test_a_model_without_a_price_in_effect_at_occurred_at_is_422(billing, factory):
    factory.price("gpt-later", effective_from=now() - dt.timedelta(days=1))
    too_early = billing.body(model_name="gpt-later", occurred_at=rfc3339(now() - dt.timedelta(days=2)))
    assert_error(billing.post(too_early), 422, fields=["model_name"])
    billing.assert_nothing_queued()

    in_effect = billing.body(model_name="gpt-later", occurred_at=rfc3339(now() - dt.timedelta(hours=1)))
    assert billing.post(in_effect).status_code == 202
    assert len(billing.queued()) == 1


def test_a_model_priced_only_from_the_future_is_422_at_the_time_of_receipt(billing, factory):
    factory.price("gpt-next", effective_from=now() + dt.timedelta(hours=1))
    assert_error(billing.post(billing.body(model_name="gpt-next")), 422, fields=["model_name"])
    billing.assert_nothing_queued()


def test_an_inactive_attributed_user_organization_and_membership_are_still_billed(billing, factory):
    # Usage happened, so it is billed; deactivation stops a caller (auth), not the billing.
    organization = factory.organization(active=False)
    user = factory.user(active=False)
    factory.membership(user, organization, "member", active=False)
    response = billing.post(billing.body(user_id=str(user.id), organization_id=str(organization.id)))
    assert response.status_code == 202, response.get_json()


def test_a_user_without_a_membership_in_the_organization_is_422_naming_user_id(billing, factory):
    outsider = factory.user()
    body = assert_error(billing.post(billing.body(user_id=str(outsider.id))), 422, fields=["user_id"])
    assert "membership" in body["details"][0]["message"]
    billing.assert_nothing_queued()


def test_a_membership_added_after_a_refusal_is_accepted_at_once(billing, factory):
    newcomer = factory.user()
    assert_error(billing.post(billing.body(user_id=str(newcomer.id))), 422, fields=["user_id"])
    factory.membership(newcomer, billing.organization, "member")

    assert billing.post(billing.body(user_id=str(newcomer.id))).status_code == 202


# --- the body as a whole: 400 -----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"model_name": "gpt-4o-mini",',
        b"",
        b"{'single': 'quotes'}",
        b'{"input_tokens": NaN}',
        b'{"input_tokens": Infinity}',
        b"[]",
        b'[{"model_name": "gpt-4o-mini"}]',
        b'"a string"',
        b"12",
        b"null",
        b"true",
        b'{"source": "caf\xe9"}',
        b'{"source": "\xff\xfe"}',
        '{"source": "x"}'.encode("utf-16"),
        '{"source": "x"}'.encode("utf-32"),
    ],
    ids=[
        "text", "truncated", "empty", "single-quotes", "nan", "infinity", "array", "array-of-object", "string",
        "number", "null", "true", "latin-1", "invalid-utf-8", "utf-16", "utf-32",
    ],
)
def test_a_body_that_is_not_a_utf8_json_object_is_400(billing, data):
    assert_error(post_raw(billing, data), 400)
    billing.assert_nothing_queued()


def _valid_json_with(billing, old: str, new: str) -> bytes:
    """The valid body as compact JSON with ``old`` replaced by ``new``; a lone surrogate
    in ``new`` (e.g. "\\udcff") becomes the invalid UTF-8 byte it escapes."""
    text = json.dumps(billing.body(source="x"), separators=(",", ":"))
    assert old in text
    return text.replace(old, new, 1).encode("utf-8", "surrogateescape")


# A valid body is validated in one pass from its bytes (pydantic-core's JSON parser); a
# refused one step by step. These are complete bodies with one oddity each, where the two
# parsers could disagree: the answer must be what the contract says either way.
ODD_BUT_COMPLETE_BODIES = [
    ("nan-in-a-field", lambda b: _valid_json_with(b, '"input_tokens":1200', '"input_tokens":NaN'), 400, None),
    ("infinity-in-an-extra-field", lambda b: _valid_json_with(b, "{", '{"x":Infinity,'), 400, None),
    ("invalid-utf-8-in-a-string", lambda b: _valid_json_with(b, '"source":"', '"source":"\udcff'), 400, None),
    ("lone-surrogate-escape", lambda b: _valid_json_with(b, '"service_name":"', '"service_name":"\\ud800'), 422, "service_name"),
    ("utf-8-bom", lambda b: b"\xef\xbb\xbf" + _valid_json_with(b, "{", "{"), 202, None),
    ("duplicate-key-last-valid", lambda b: _valid_json_with(b, '"input_tokens":1200', '"input_tokens":"x","input_tokens":1200'), 202, None),
    ("duplicate-key-last-invalid", lambda b: _valid_json_with(b, '"input_tokens":1200', '"input_tokens":1200,"input_tokens":"x"'), 422, "input_tokens"),
]


@pytest.mark.parametrize(("make", "status", "field"), [c[1:] for c in ODD_BUT_COMPLETE_BODIES], ids=[c[0] for c in ODD_BUT_COMPLETE_BODIES])
def test_odd_but_complete_bodies_get_the_contracts_answer(billing, make, status, field):
    response = post_raw(billing, make(billing))
    assert response.status_code == status, response.get_json()
    if status == 202:
        (event,) = billing.queued()
        assert event.input_tokens == 1200
    else:
        billing.assert_nothing_queued()
    if field:
        assert field in [detail["field"] for detail in response.get_json()["details"]]


def test_a_valid_body_with_whitespace_and_unicode_escapes_is_accepted(billing):
    body = billing.body(source="caf\u00e9 \u2603")
    data = json.dumps(body, indent=4, ensure_ascii=True).encode()
    response = post_raw(billing, b"\n  " + data + b"\n", "application/json; charset=utf-8")
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.source == "caf\u00e9 \u2603"


# --- Content-Type: 415 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
    ids=["none", "text-plain", "form", "multipart", "lookalike"],
)
def test_a_content_type_other_than_application_json_is_415(billing, content_type):
    response = post_raw(billing, json.dumps(billing.body()).encode(), content_type)
    assert_error(response, 415)
    billing.assert_nothing_queued()


# --- size: 413 above 64 KiB -------------------------------------------------------------


def _padded(billing, size: int) -> bytes:
    """A valid body padded with JSON whitespace to exactly ``size`` bytes."""
    data = json.dumps(billing.body()).encode()
    return data[:-1] + b" " * (size - len(data)) + b"}"


def test_a_body_of_exactly_64_kib_is_accepted(billing):
    response = post_raw(billing, _padded(billing, 64 * 1024))
    assert response.status_code == 202, response.get_json()
    assert len(billing.queued()) == 1


def test_a_body_over_64_kib_is_413(billing):
    assert_error(post_raw(billing, _padded(billing, 64 * 1024 + 1)), 413)
    assert_error(post_raw(billing, json.dumps(billing.body(source="s" * 100_000)).encode()), 413)
    billing.assert_nothing_queued()


def post_chunked(billing, data: bytes):
    """A streamed body without Content-Length, as a server that de-chunks hands it over."""
    return billing.client.post(
        URL,
        input_stream=io.BytesIO(data),
        headers=billing.headers() | {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_64_kib_is_413_even_if_its_first_64_kib_are_valid_json(billing):
    # A valid object followed by whitespace: cut at 64 KiB it would still parse.
    data = json.dumps(billing.body()).encode()
    assert_error(post_chunked(billing, data + b" " * (64 * 1024 + 1 - len(data))), 413)
    assert_error(post_chunked(billing, data + b" " * (200 * 1024)), 413)
    billing.assert_nothing_queued()


def test_a_chunked_body_of_64_kib_is_accepted(billing):
    response = post_chunked(billing, _padded(billing, 64 * 1024))
    assert response.status_code == 202, response.get_json()
    assert len(billing.queued()) == 1


# --- Idempotency-Key header: 1 to 255 printable ASCII, no space at either end ---------


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "cl\u00e9", "a\x01b", "a\x7fb", "tab\there", "\x00", " ", "k ", " k"],
    ids=["empty", "256-chars", "non-ascii", "control", "del", "tab", "nul", "a-space", "trailing-space", "leading-space"],
)
def test_an_invalid_idempotency_key_is_422(billing, key):
    response = billing.post(idempotency_key=key)
    assert_error(response, 422, fields=["Idempotency-Key"])
    billing.assert_nothing_queued()


@pytest.mark.parametrize(
    "key", ["k", "k" * 255, "a ~!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}", "call 8812 / turn 3"], ids=["1", "255", "punctuation", "inner-spaces"]
)
def test_a_valid_idempotency_key_is_accepted(billing, key):
    response = billing.post(idempotency_key=key)
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.idempotency_key == key
