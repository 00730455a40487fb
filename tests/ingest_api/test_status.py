"""GET /api/billing/external-usage/{id}: the status record of one event.

An accepted event no worker has recorded yet reads ``queued``; a recorded one reads its
log row (``recorded``/``reported``/``failed``, costs as decimal strings); one the pipeline
could not bill reads ``failed`` with the reason. Unknown ids are 404; same auth as POST.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest

from shared import db, models
from shared.usage_event import AcceptedUsageEvent
from tests.support.api_caller import record_as_worker
from tests.support.billing import URL
from tests.support.error_answers import assert_error, assert_unauthorized
from tests.support.timestamps import now

FIELDS = {
    "id", "status", "user_id", "organization_id", "service_name", "model_name", "input_tokens", "output_tokens",
    "source", "occurred_at", "service_cost", "agent700_cost", "stripe", "error", "void",
}
DECIMAL_STRING = re.compile(r"-?[0-9]+\.([0-9]+)")


def assert_money(value, expected: str) -> None:
    """A decimal string, never a float or exponent notation, kept to >= 12 places."""
    assert isinstance(value, str), value
    match = DECIMAL_STRING.fullmatch(value)
    assert match, value
    assert len(match.group(1)) >= 12, value
    assert Decimal(value) == Decimal(expected)


def test_an_accepted_event_reads_queued(billing):
    body = billing.body(source="sdk", occurred_at=(now() - dt.timedelta(hours=2)).isoformat())
    accepted = billing.post(body)
    assert accepted.status_code == 202
    event_id = accepted.get_json()["id"]

    response = billing.get(event_id)
    assert response.status_code == 200, response.get_json()
    record = response.get_json()
    assert set(record) == FIELDS
    assert record == {
        "id": event_id,
        "status": "queued",
        "user_id": body["user_id"],
        "organization_id": body["organization_id"],
        "service_name": body["service_name"],
        "model_name": body["model_name"],
        "input_tokens": body["input_tokens"],
        "output_tokens": body["output_tokens"],
        "source": "sdk",
        "occurred_at": record["occurred_at"],
        "service_cost": None,
        "agent700_cost": None,
        "stripe": {"identifier": event_id, "value": None, "reported_at": None},
        "error": None,
        "void": None,
    }
    assert dt.datetime.fromisoformat(record["occurred_at"]) == dt.datetime.fromisoformat(body["occurred_at"])


def test_the_location_of_an_accepted_event_is_its_status(billing):
    accepted = billing.post()
    response = billing.client.get(accepted.headers["Location"], headers=billing.headers())
    assert response.status_code == 200
    assert response.get_json()["id"] == accepted.get_json()["id"]


@pytest.mark.parametrize(
    "service_cost, agent700_cost",
    [
        ("0.000384", "0.000768"),
        ("0.00000015", "0.0000003"),  # one token: tiny amounts stay plain decimals
        ("0", "0"),  # zero tokens
        ("123456.123456789012345678", "246912.246913578024691356"),
    ],
    ids=["typical", "tiny", "zero", "large"],
)
def test_a_recorded_event_reads_recorded_with_decimal_string_costs(billing, settings, service_cost, agent700_cost):
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, service_cost=Decimal(service_cost), agent700_cost=Decimal(agent700_cost))

    record = billing.get(event.id).get_json()
    assert set(record) == FIELDS
    assert record["status"] == "recorded"
    assert_money(record["service_cost"], service_cost)
    assert_money(record["agent700_cost"], agent700_cost)
    assert record["stripe"]["identifier"] == str(event.id)
    assert record["error"] is None
    assert (record["user_id"], record["service_name"], record["input_tokens"]) == (
        str(event.user_id), event.service_name, event.input_tokens,
    )


def test_a_reported_event_reads_its_stripe_report(billing, settings):
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    reported_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    record_as_worker(settings, billing, event, status="reported", stripe_value=768, stripe_reported_at=reported_at)

    record = billing.get(event.id).get_json()
    assert record["status"] == "reported"
    assert record["stripe"]["identifier"] == str(event.id)
    assert record["stripe"]["value"] == 768
    assert dt.datetime.fromisoformat(record["stripe"]["reported_at"]) == reported_at


def test_a_recorded_event_stripe_refused_reads_failed_with_the_error(billing, settings):
    assert billing.post().status_code == 202
    (event,) = billing.queued()
    record_as_worker(settings, billing, event, status="failed", error="The organization has no Stripe customer id.")

    record = billing.get(event.id).get_json()
    assert record["status"] == "failed"
    assert record["error"] == "The organization has no Stripe customer id."
    assert_money(record["agent700_cost"], "0.000768")


def test_an_event_the_pipeline_rejected_reads_failed_with_the_reason(billing, settings):
    event = AcceptedUsageEvent(
        id=uuid.uuid4(), user_id=billing.user.id, organization_id=billing.organization.id, service_name="transcription",
        model_name="gpt-4o-mini", input_tokens=3, output_tokens=4, source="external_api",
        occurred_at=now() - dt.timedelta(minutes=1), received_at=now(), caller_user_id=billing.caller.id,
    )
    with db.transaction(settings.database_url) as session:
        session.add(models.RejectedUsageEvent(
            id=event.id, payload=event.model_dump(mode="json"), reason="No price for gpt-4o-mini at occurred_at.",
        ))

    response = billing.get(event.id)
    assert response.status_code == 200, response.get_json()
    record = response.get_json()
    assert set(record) == FIELDS
    assert record["status"] == "failed"
    assert record["error"] == "No price for gpt-4o-mini at occurred_at."
    assert (record["input_tokens"], record["output_tokens"]) == (3, 4)
    assert record["service_cost"] is None and record["agent700_cost"] is None
    assert record["stripe"] == {"identifier": str(event.id), "value": None, "reported_at": None}


def test_an_unknown_id_is_404(billing):
    assert_error(billing.get(uuid.uuid4()), 404)


@pytest.mark.parametrize("path", ["not-a-uuid", "12345", "%20", "00000000-0000-0000-0000-00000000000g"])
def test_a_path_that_is_not_a_uuid_is_404(billing, path):
    assert_error(billing.client.get(f"{URL}/{path}", headers=billing.headers()), 404)


def test_reading_a_status_needs_a_superadmin(billing, factory):
    event_id = billing.post().get_json()["id"]
    assert_unauthorized(billing.client.get(f"{URL}/{event_id}"))
    assert_unauthorized(billing.get(event_id, token="garbage"))
    member = factory.user()
    factory.membership(member, billing.organization, "member")
    assert_error(billing.get(event_id, token=factory.jwt(member)), 403)
    assert billing.get(event_id, token=billing.jwt).status_code == 200
