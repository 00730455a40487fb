"""GET /openapi.json: the OpenAPI 3.1 document of the API, generated from the pydantic
models the endpoints validate with, and true of the running app (a schemathesis run:
no 5xx, every response as documented)."""

from __future__ import annotations

import datetime as dt

import jsonschema_rs  # schemathesis's own validator
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from pydantic.json_schema import models_json_schema

from ingest_api import openapi, schemas
from shared import usage_totals
from tests.support.api_caller import record_as_worker
from tests.support.billing import BATCH_URL, OMIT, URL

MODELS = {
    "UsageEventIn": (schemas.UsageEventIn, "validation"),
    "BatchEventIn": (schemas.BatchEventIn, "validation"),
    "BatchIn": (schemas.BatchIn, "validation"),
    "AcceptedOut": (schemas.AcceptedOut, "serialization"),
    "UsageEventOut": (schemas.UsageEventOut, "serialization"),
    "BatchOut": (schemas.BatchOut, "serialization"),
    "ErrorOut": (schemas.ErrorOut, "serialization"),
    "OutcomeUnknownOut": (schemas.OutcomeUnknownOut, "serialization"),
    "BatchOutcomeUnknownOut": (schemas.BatchOutcomeUnknownOut, "serialization"),
    "HealthOut": (schemas.HealthOut, "serialization"),
    "ReadinessOut": (schemas.ReadinessOut, "serialization"),
    "VoidIn": (schemas.VoidIn, "validation"),
    "VoidOut": (schemas.VoidOut, "serialization"),
    "UsageTotalsQuery": (schemas.UsageTotalsQuery, "validation"),
    "UsageTotalsOut": (schemas.UsageTotalsOut, "serialization"),
}
REF_TEMPLATE = "#/components/schemas/{model}"
VOID_URL = URL + "/{event_id}/void"
USAGE_TOTALS_URL = "/api/billing/usage"




def test_the_document_is_openapi_3_1_with_every_operation(document):
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] and document["info"]["version"]
    assert {path: set(item) for path, item in document["paths"].items()} == {
        URL: {"post"},
        BATCH_URL: {"post"},
        URL + "/{event_id}": {"get"},
        VOID_URL: {"post"},
        USAGE_TOTALS_URL: {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/openapi.json": {"get"},
        "/docs": {"get"},
    }
    bearer = document["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearer": []}]
    record = document["paths"][URL]["post"]
    assert record["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="UsageEventIn")}
    assert set(record["responses"]) == {"200", "202", "400", "401", "403", "409", "413", "415", "422", "429", "503"}
    assert "Retry-After" in record["responses"]["429"]["headers"]
    assert "Location" in record["responses"]["202"]["headers"]
    assert "WWW-Authenticate" in record["responses"]["401"]["headers"]
    assert "Retry-After" in record["responses"]["503"]["headers"]
    assert [p["name"] for p in record["parameters"]] == ["Idempotency-Key"]
    batch = document["paths"][BATCH_URL]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="BatchIn")}


def test_the_void_operation_is_described_like_the_others(document):
    void = document["paths"][VOID_URL]["post"]
    assert (void["operationId"], void["tags"]) == ("voidUsage", ["usage"])
    assert "security" not in void  # the document's own: the superadmin Bearer token
    assert void["parameters"] == document["paths"][URL + "/{event_id}"]["get"]["parameters"]
    assert void["requestBody"] == {
        "required": True, "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="VoidIn")}}}
    }
    responses = void["responses"]
    assert set(responses) == {"200", "202", "400", "401", "403", "404", "409", "413", "415", "422", "429", "503"}
    for status in ("200", "202"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="UsageEventOut")}
    for status in set(responses) - {"200", "202"}:
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="ErrorOut")}
    assert "Retry-After" in responses["409"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    # The shared answers are the other endpoints' own.
    for status in ("401", "403", "413", "415", "429"):
        assert responses[status] == document["paths"][URL]["post"]["responses"][status], status


def test_the_usage_totals_operation_is_described_like_the_others(document):
    totals = document["paths"][USAGE_TOTALS_URL]["get"]
    assert (totals["operationId"], totals["tags"]) == ("usageTotals", ["usage"])
    assert "security" not in totals  # the document's own: the superadmin Bearer token
    parameters = {p["name"]: p for p in totals["parameters"]}
    assert list(parameters) == ["organization_id", "from", "to", "group_by"]
    assert {p["in"] for p in parameters.values()} == {"query"}
    assert [name for name, p in parameters.items() if p["required"]] == ["organization_id"]
    assert parameters["organization_id"]["schema"] == {"type": "string", "format": "uuid"}
    for name in ("from", "to"):
        assert parameters[name]["schema"] == {"type": "string", "format": "date-time"}, name
    group_by = parameters["group_by"]
    assert (group_by["style"], group_by["explode"]) == ("form", True)  # repeated: group_by=a&group_by=b
    assert group_by["schema"]["items"]["enum"] == list(usage_totals.GROUPS)
    assert (group_by["schema"]["maxItems"], group_by["schema"]["uniqueItems"]) == (len(usage_totals.GROUPS), True)
    responses = totals["responses"]
    assert set(responses) == {"200", "401", "403", "422", "429", "503"}
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="UsageTotalsOut")}
    for status in set(responses) - {"200"}:
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="ErrorOut")}
    assert "Retry-After" in responses["503"]["headers"]
    for status in ("401", "403", "429"):
        assert responses[status] == document["paths"][URL]["post"]["responses"][status], status


def test_the_usage_totals_money_is_decimal_strings_and_keys_name_the_groups(document):
    components = document["components"]["schemas"]
    figures = components["UsageFiguresOut"]["properties"]
    for money in ("service_cost", "agent700_cost"):
        assert figures[money]["type"] == "string", money
    assert figures["stripe_value"]["type"] == "integer"
    assert set(components["UsageGroupKeyOut"]["properties"]) == set(usage_totals.GROUPS)
    assert set(components["UsageStatesOut"]["properties"]) == set(usage_totals.STATES)
    assert "from" in components["UsageTotalsOut"]["required"]


def test_the_void_models_state_the_reasons_rule(document):
    components = document["components"]["schemas"]
    void_in = components["VoidIn"]
    assert void_in["additionalProperties"] is False and void_in["required"] == ["reason"]
    reason = void_in["properties"]["reason"]
    assert (reason["type"], reason["minLength"], reason["maxLength"]) == ("string", 1, 500)
    void = components["UsageEventOut"]["properties"]["void"]
    assert {"$ref": REF_TEMPLATE.format(model="VoidOut")} in void["anyOf"]
    assert set(components["VoidOut"]["properties"]["method"]["enum"]) == {
        "never_sent", "stripe_cancel", "stripe_negative_event", "manual_credit"
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_each_component_is_its_models_own_json_schema(document, name):
    model, mode = MODELS[name]
    generated = model.model_json_schema(mode=mode, ref_template=REF_TEMPLATE)
    nested = generated.pop("$defs", {})
    components = document["components"]["schemas"]
    assert components[name] == generated
    for nested_name, nested_schema in nested.items():
        assert components[nested_name] == nested_schema


def test_the_components_are_exactly_the_models_and_what_they_refer_to(document):
    _, generated = models_json_schema(list(MODELS.values()), ref_template=REF_TEMPLATE)
    assert document["components"]["schemas"] == generated["$defs"]


def test_the_batch_items_are_the_batch_event_model(document):
    events = document["components"]["schemas"]["BatchIn"]["properties"]["events"]
    assert events["items"] == {"$ref": REF_TEMPLATE.format(model="BatchEventIn")}
    assert (events["minItems"], events["maxItems"]) == (1, schemas.MAX_BATCH_EVENTS)


def test_the_document_states_the_contracts_field_rules(document):
    event = document["components"]["schemas"]["UsageEventIn"]
    assert event["additionalProperties"] is False
    assert set(event["required"]) == {"user_id", "organization_id", "model_name", "input_tokens", "output_tokens", "service_name"}
    for field in ("input_tokens", "output_tokens"):
        assert (event["properties"][field]["type"], event["properties"][field]["minimum"], event["properties"][field]["maximum"]) == (
            "integer", 0, 2_147_483_647,
        )
    assert (event["properties"]["source"]["minLength"], event["properties"]["source"]["maxLength"]) == (1, 64)
    assert event["properties"]["source"]["default"] == "external_api"
    for field in ("user_id", "organization_id"):
        assert event["properties"][field]["format"] == "uuid"


def test_the_operations_endpoints_need_no_credential(document):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert document["paths"][path]["get"]["security"] == [], path


# --- the 503 answers, in both shapes, are what the document says ----------------------------


def _validate(document: dict, path: str, method: str, response, shape: str) -> None:
    """``response`` is one of the shapes the document gives for its status, and its body
    is valid against that shape (``$ref``s resolved within the document); its headers
    are named there."""
    documented = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    assert {"$ref": REF_TEMPLATE.format(model=shape)} in schema.get("anyOf", [schema]), schema
    shape_schema = {**document, "$ref": REF_TEMPLATE.format(model=shape)}
    jsonschema_rs.Draft202012Validator(shape_schema).validate(response.get_json())
    for header in ("Retry-After", "Location"):
        if header in response.headers:
            assert header in documented.get("headers", {}), (header, documented)


@pytest.fixture
def reply_lost(app, monkeypatch):
    """The intake as it is when the queue's reply is lost: the events may have been taken."""
    from shared.intake import OutcomeUnknown

    def accept(pairs, app_password_id=None):
        raise OutcomeUnknown([event.id for event, _ in pairs])

    monkeypatch.setattr(app.extensions["intake"], "accept", accept)


@pytest.fixture
def queue_down(app, monkeypatch):
    """The intake as it is when Redis refuses: certainly nothing was taken."""
    from shared.intake import QueueUnavailable

    def accept(pairs, app_password_id=None):
        raise QueueUnavailable("down")

    monkeypatch.setattr(app.extensions["intake"], "accept", accept)


def test_the_unknown_outcome_of_one_event_is_a_documented_503(document, billing, reply_lost):
    response = billing.post(idempotency_key="lost-1")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unknown" and response.headers["Location"] == f"{URL}/{body['id']}", body
    _validate(document, URL, "post", response, "OutcomeUnknownOut")
    assert {"status", "id"} <= set(document["components"]["schemas"]["OutcomeUnknownOut"]["required"])


def test_the_unknown_outcome_of_a_batch_is_a_documented_503(document, billing, reply_lost):
    response = billing.post_batch([billing.body(), billing.body(input_tokens=-1)])
    assert response.status_code == 503
    body = response.get_json()
    assert [result["status"] for result in body["results"]] == ["unknown", "rejected"], body
    _validate(document, BATCH_URL, "post", response, "BatchOutcomeUnknownOut")
    statuses = document["components"]["schemas"]["BatchResultOut"]["properties"]["status"]["enum"]
    assert "unknown" in statuses


def test_a_plain_503_is_documented_too(document, billing, queue_down):
    for response, path in ((billing.post(), URL), (billing.post_batch([billing.body()]), BATCH_URL)):
        assert response.status_code == 503 and "status" not in response.get_json(), response.get_json()
        _validate(document, path, "post", response, "ErrorOut")


# --- the document is true of the app ----------------------------------------------------


# The document as the app serves it is the one the run is generated from (asserted
# below); it is loaded at import because parametrization happens at collection.
api = schemathesis.openapi.from_dict(openapi.document())


def test_the_served_document_is_the_generated_one(document):
    assert document == openapi.document()


@api.parametrize()
@hypothesis_settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_response_matches_the_document(case, app, billing, settings):
    # The schema is loaded at collection; checks that re-send a request use its app.
    case.operation.schema.app = app
    if not case.meta.generation.mode.is_negative:
        _refer_to_the_billing_world(case, billing, settings)
    # Schema-valid is not acceptable: the document cannot say which ids, services and
    # priced models exist, nor where "35 days ago" is, so a valid shape may be a 422.
    excluded = [schemathesis.checks.positive_data_acceptance]
    batch = case.operation.path == BATCH_URL
    if batch:
        # The contract judges each event of a batch on its own: an invalid item is a
        # "rejected" result in a 200, not a refusal of the batch (asserted below).
        excluded.append(schemathesis.checks.negative_data_rejection)
    response = case.call_and_validate(app=app, headers=billing.headers(), excluded_checks=excluded)
    if batch and case.method.upper() == "POST" and response.status_code == 200:
        for event, result in zip(case.body["events"], response.json()["results"], strict=True):
            if not isinstance(event, dict):
                assert result["status"] == "rejected", (event, result)


def _refer_to_the_billing_world(case, billing, settings) -> None:
    """Point generated references at things that exist, so that the run reaches the
    queue (202, 200, 409) and reads real status records, not only the 422s and 404s."""
    if case.operation.path == VOID_URL:
        _void_an_event_of_the_billing_world(case, billing, settings)
        return
    if case.operation.path == USAGE_TOTALS_URL:
        _ask_the_usage_of_the_billing_world(case, billing, settings)
        return
    if case.method.upper() == "GET":
        event_id = case.path_parameters.get("event_id")
        if isinstance(event_id, str) and event_id[-1:] in "02468ace":  # about half of them
            accepted = billing.post()
            assert accepted.status_code == 202, accepted.get_json()
            case.path_parameters["event_id"] = accepted.get_json()["id"]
        return
    body = case.body
    events = body.get("events") if isinstance(body, dict) else None
    for event in events if isinstance(events, list) else [body]:
        if isinstance(event, dict):
            event.update(billing.body(input_tokens=OMIT, output_tokens=OMIT))


def _void_an_event_of_the_billing_world(case, billing, settings) -> None:
    """Most voids name an event that exists, chosen by the generated id's last digit:
    recorded and never sent (a 200), reported an hour ago (a 202: Stripe cancels it), or
    still queued (a 409); the rest keep an unknown id (a 404). The generated reason is
    kept: it is what the run is about."""
    event_id = case.path_parameters.get("event_id")
    kind = {"0": "never sent", "2": "never sent", "4": "never sent", "6": "queued", "8": "reported",
            "a": "reported", "c": "never sent", "e": "reported"}.get(event_id[-1:].lower() if isinstance(event_id, str) else "")
    if kind is None:
        return
    accepted = billing.post()
    assert accepted.status_code == 202, accepted.get_json()
    case.path_parameters["event_id"] = accepted.get_json()["id"]
    if kind == "queued":
        return
    (event,) = (event for event in billing.queued() if str(event.id) == accepted.get_json()["id"])
    if kind == "never sent":
        record_as_worker(settings, billing, event)
    else:
        an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        record_as_worker(settings, billing, event, status="reported", stripe_value=768,
                         stripe_reported_at=an_hour_ago, stripe_first_sent_at=an_hour_ago)


def _ask_the_usage_of_the_billing_world(case, billing, settings) -> None:
    """Most queries name the billing world's organization, which has an event this month;
    those whose generated window is not one (most are not) get this month's, keeping
    the generated group_by: the run reads real totals (200), not only 422s."""
    query = case.query if isinstance(case.query, dict) else {}
    organization_id = query.get("organization_id")
    if not isinstance(organization_id, str) or organization_id[-1:] not in "02468ace":  # about half of them
        return
    record_as_worker(settings, billing, billing.event())
    query["organization_id"] = str(billing.organization.id)
    if organization_id[-2:-1] in "01234567":
        now = dt.datetime.now(dt.UTC)
        query["from"], query["to"] = (now - dt.timedelta(days=1)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat()
    case.query = query
