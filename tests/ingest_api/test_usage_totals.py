"""GET /api/billing/usage: an organization's usage over a window, through the real app and
PostgreSQL. The same superadmin credential as the other endpoints; the window is
``[from, to)``, by default the current UTC month until now; ``group_by`` repeated for each
group; money as exact decimal strings; any problem of the query a JSON 422 naming it."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from ingest_api.usage_totals import COVERS
from shared import usage_totals
from shared.models import UsageStatus
from tests.support.billing import log_row, store
from tests.support.error_answers import assert_error, assert_unauthorized

USAGE_URL = "/api/billing/usage"
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
WINDOW = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}


def ask(billing, params=None, *, token: str | None = None, organization=None):
    """GET the usage of the billing world's organization (``organization_id`` given unless
    ``params`` has it), with ``params`` as the query string (a list of pairs repeats)."""
    query = list(params.items()) if isinstance(params, dict) else list(params or [])
    if not any(name == "organization_id" for name, _ in query):
        query.insert(0, ("organization_id", str((organization or billing.organization).id)))
    return billing.client.get(USAGE_URL, query_string=query, headers=billing.headers(token))


def row(billing, cost: str, status: str, at: dt.datetime, *, organization=None, **columns):
    return log_row(user_id=billing.user.id, organization_id=(organization or billing.organization).id,
                   service_id=billing.service.id, price=billing.price, agent700_cost=cost, status=status, occurred_at=at,
                   **columns)


@pytest.fixture
def november(billing, settings, factory):
    """Rows of the billing world's November: every state, two sources, two days; and
    what must not count: rows just outside the window, another organization's row."""
    other = factory.organization(stripe_customer_id=None)
    store(settings,
          row(billing, "0.000000600000", UsageStatus.REPORTED, START),  # the first instant counts
          row(billing, "0.100000000001", UsageStatus.REPORTED, START + dt.timedelta(days=3, hours=5)),
          row(billing, "0.200000000000", UsageStatus.RECORDED, START + dt.timedelta(days=3, hours=6), source="batch_job"),
          row(billing, "0.300000000000", UsageStatus.FAILED, START + dt.timedelta(days=20)),
          row(billing, "0.400000000000", UsageStatus.VOIDED, START + dt.timedelta(days=29, hours=23)),
          row(billing, "9.000000000000", UsageStatus.REPORTED, END),  # the window is half-open
          row(billing, "9.000000000000", UsageStatus.REPORTED, START - dt.timedelta(microseconds=1)),
          row(billing, "9.000000000000", UsageStatus.REPORTED, START + dt.timedelta(days=1), organization=other))
    return billing


# --- the answer ------------------------------------------------------------------------------


def test_the_total_is_exact_decimal_strings_split_by_state(november):
    response = ask(november, WINDOW)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["organization_id", "from", "to", "group_by", "as_of", "covers", "total", "groups"]
    assert (body["organization_id"], body["from"], body["to"], body["group_by"]) == (
        str(november.organization.id), "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", [],
    )
    assert body["covers"] == COVERS and body["as_of"].endswith("Z")
    total = body["total"]
    assert (total["events"], total["input_tokens"], total["output_tokens"]) == (5, 500, 250)
    assert total["agent700_cost"] == "1.000000600001000000"
    assert total["service_cost"] == "0.500000300000500000"
    assert total["stripe_value"] == 1 + 100000 + 200000 + 300000 + 400000
    by_state = total["by_state"]
    assert list(by_state) == ["billed", "pending", "failed", "voided"]
    assert (by_state["billed"]["events"], by_state["billed"]["agent700_cost"]) == (2, "0.100000600001000000")
    assert [by_state[s]["agent700_cost"] for s in ("pending", "failed", "voided")] == [
        "0.200000000000000000", "0.300000000000000000", "0.400000000000000000",
    ]
    assert body["groups"] == [{"key": {}, **total}]


def test_groups_are_keyed_by_what_was_asked_in_that_order(november):
    response = ask(november, [*WINDOW.items(), ("group_by", "source"), ("group_by", "day")])

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["group_by"] == ["source", "day"]
    assert [(g["key"], g["events"]) for g in body["groups"]] == [
        ({"source": "batch_job", "day": "2026-11-04T00:00:00Z"}, 1),
        ({"source": "external_api", "day": "2026-11-01T00:00:00Z"}, 1),
        ({"source": "external_api", "day": "2026-11-04T00:00:00Z"}, 1),
        ({"source": "external_api", "day": "2026-11-21T00:00:00Z"}, 1),
        ({"source": "external_api", "day": "2026-11-30T00:00:00Z"}, 1),
    ]
    assert list(body["groups"][0]) == ["key", "events", "input_tokens", "output_tokens", "service_cost",
                                       "agent700_cost", "stripe_value", "by_state"]
    assert body["groups"][-1]["by_state"]["voided"]["agent700_cost"] == "0.400000000000000000"
    assert body["groups"][-1]["by_state"]["billed"] == {
        "events": 0, "input_tokens": 0, "output_tokens": 0, "service_cost": "0.000000000000000000", "agent700_cost": "0.000000000000000000", "stripe_value": 0,
    }


def test_user_model_service_and_hour_keys_are_strings(november):
    groups = ask(november, [*WINDOW.items(), *[("group_by", g) for g in ("user_id", "model_name", "service_name", "hour")]]
                 ).get_json()["groups"]

    assert groups[0]["key"] == {"user_id": str(november.user.id), "model_name": "gpt-4o-mini",
                                "service_name": "transcription", "hour": "2026-11-01T00:00:00Z"}
    assert [g["key"]["hour"] for g in groups] == [
        "2026-11-01T00:00:00Z", "2026-11-04T05:00:00Z", "2026-11-04T06:00:00Z", "2026-11-21T00:00:00Z",
        "2026-11-30T23:00:00Z",
    ]


def test_times_with_an_offset_are_the_same_instants_answered_in_utc(november):
    body = ask(november, {"from": "2026-11-01T01:00:00+01:00", "to": "2026-11-30T19:00:00-05:00"}).get_json()

    assert (body["from"], body["to"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert body["total"]["events"] == 5


def test_a_window_without_events_is_zeros_and_no_groups(billing):
    body = ask(billing, WINDOW).get_json()

    assert body["total"]["events"] == 0 and body["total"]["agent700_cost"] == "0.000000000000000000"
    assert body["groups"] == []


def test_the_window_defaults_to_the_current_utc_month_until_now(billing, settings):
    now = dt.datetime.now(dt.UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    store(settings, row(billing, "0.000768000000", UsageStatus.REPORTED, max(month_start, now - dt.timedelta(minutes=5))),
          row(billing, "5.000000000000", UsageStatus.REPORTED, now + dt.timedelta(minutes=4)))  # not yet "now"

    body = ask(billing).get_json()

    assert body["from"] == month_start.isoformat().replace("+00:00", "Z")
    assert now <= dt.datetime.fromisoformat(body["to"]) <= dt.datetime.now(dt.UTC)
    assert (body["total"]["events"], body["total"]["agent700_cost"]) == (1, "0.000768000000000000")


def test_only_to_given_keeps_from_at_the_start_of_the_month(billing):
    now = dt.datetime.now(dt.UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)

    body = ask(billing, {"to": (month_start + dt.timedelta(hours=1)).isoformat()}).get_json()

    assert body["from"] == month_start.isoformat().replace("+00:00", "Z")


# --- who may ask ---------------------------------------------------------------------------


def test_no_credential_is_401_and_a_plain_member_403(billing, factory):
    assert_unauthorized(billing.client.get(USAGE_URL, query_string={"organization_id": str(billing.organization.id)}))
    member = factory.user()
    factory.membership(member, billing.organization, "member")

    assert_error(ask(billing, token=factory.app_password(member)), 403)


def test_a_revoked_app_password_is_401_even_while_its_caller_is_cached(billing, broker_url):
    from shared import revocation_marks
    from tests.support.intake_stream import redis_client

    assert ask(billing).status_code == 200  # the caller is cached now
    client = redis_client(broker_url)
    try:
        with_id = _app_password_id(billing)
        revocation_marks.mark_revoked(client, with_id)
    finally:
        client.close()

    body = assert_unauthorized(ask(billing))
    assert "revoked" in body["error"]


def _app_password_id(billing) -> uuid.UUID:
    from shared import db, models

    with db.transaction(billing.settings.database_url) as session:
        return session.query(models.AppPassword.id).filter_by(user_id=billing.caller.id).scalar()


def test_a_jwt_of_the_superadmin_is_taken(billing):
    assert ask(billing, token=billing.jwt).status_code == 200


def test_a_superadmin_may_read_another_organizations_usage(billing, factory):
    """As the other endpoints: a superadmin records and reads usage of any organization."""
    other = factory.organization(stripe_customer_id=None)

    response = ask(billing, organization=other)

    assert response.status_code == 200 and response.get_json()["organization_id"] == str(other.id)


# --- what is refused: 422 naming the parameter ---------------------------------------------------


def test_an_unknown_organization_is_422_naming_it(billing):
    assert_error(ask(billing, {"organization_id": str(uuid.uuid4())}), 422, fields=["organization_id"])


def test_a_missing_organization_is_422_naming_it(billing):
    assert_error(billing.client.get(USAGE_URL, headers=billing.headers()), 422, fields=["organization_id"])


@pytest.mark.parametrize(("params", "fragment"), [
    ({"from": "2026-12-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "must be after"),
    ({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "must be after"),
    ({"from": "2026-11-01T00:00:00Z", "to": "2026-12-02T00:00:00.000001Z"}, f"at most {usage_totals.MAX_SPAN.days} days"),
    ({"from": "2026-01-01T00:00:00Z"}, "defaults to"),  # to: now, months later
])
def test_a_window_backwards_empty_or_too_long_is_422_naming_to(billing, params, fragment):
    body = assert_error(ask(billing, params), 422, fields=["to"])
    assert fragment in body["details"][0]["message"], body


def test_a_window_of_exactly_31_days_is_taken(billing):
    assert ask(billing, {"from": "2026-11-01T00:00:00Z", "to": "2026-12-02T00:00:00Z"}).status_code == 200


@pytest.mark.parametrize("value", ["2026-11-01", "2026-11-01T00:00:00", "1700000000", "2026-11-01T00:00Z", ""])
def test_a_time_that_is_not_rfc_3339_with_an_offset_is_422(billing, value):
    body = assert_error(ask(billing, {"from": value}), 422, fields=["from"])
    assert "RFC 3339" in body["details"][0]["message"], body


def test_unknown_and_repeated_parameters_and_bad_groups_are_all_named(billing):
    response = ask(billing, [("from", WINDOW["from"]), ("from", WINDOW["from"]), ("since", "x"),
                             ("group_by", "day"), ("group_by", "model_name,day")])

    body = assert_error(response, 422, fields=["since", "from", "group_by.1"])
    messages = {d["field"]: d["message"] for d in body["details"]}
    assert messages["since"] == "Unknown parameter."
    assert "more than once" in messages["from"]
    assert "'model_name'" in messages["group_by.1"]  # one name a parameter: repeat it, no commas


def test_a_group_named_twice_is_422(billing):
    body = assert_error(ask(billing, [("group_by", "day"), ("group_by", "day")]), 422, fields=["group_by"])
    assert body["details"][0]["message"] == "Must name each group once.", body
