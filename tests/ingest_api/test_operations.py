"""The operations endpoints: /healthz, /readyz, /metrics."""

import re
import time

from ingest_api import create_app


def test_healthz_answers_while_the_process_serves(client):
    assert client.get("/healthz").status_code == 200


def test_readyz_is_200_when_the_database_and_the_broker_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_readyz_names_the_broker_when_it_does_not_answer(settings):
    app = create_app(settings.replace(broker_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["broker"]
    assert "broker" in response.get_json()["error"]


def test_readyz_names_the_database_when_it_does_not_answer(settings):
    app = create_app(settings.replace(database_url="postgresql+psycopg2://postgres@127.0.0.1:1/none"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["database"]


def _sample(text: str, name: str, labels: str = "", *, missing: float | None = None) -> float:
    """The value of one series in a scrape. A series that is not there fails the test,
    unless ``missing`` says what it stands for (a counter this run has not counted yet)."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    if match is None:
        assert missing is not None, f"no series {name}{labels} in the scrape:\n{text}"
        return missing
    return float(match.group(1))


def test_metrics_count_accepted_events_and_requests_by_route_and_status(billing, client):
    started = time.time()
    before = client.get("/metrics").get_data(as_text=True)
    assert billing.post().status_code == 202
    assert billing.post_batch([billing.body(), billing.body()]).status_code == 200
    assert billing.post(body={"nope": 1}).status_code == 422

    after = client.get("/metrics")
    assert after.status_code == 200
    assert after.mimetype == "text/plain"
    text = after.get_data(as_text=True)
    accepted = "a700_events_accepted_total"
    assert _sample(text, accepted) - _sample(before, accepted, missing=0.0) == 3
    route = '{method="POST",route="usage.record_usage",status="422"}'
    assert _sample(text, "a700_http_requests_total", route) - _sample(before, "a700_http_requests_total", route, missing=0.0) == 1
    assert 'a700_queue_depth{queue="billing:intake"} 3.0' in text
    # Nothing is recorded yet: the oldest unreported event is the oldest of the three in the
    # intake, accepted during this test (its stream id, whole milliseconds, may be up to one
    # earlier than the moment it was added).
    assert 0 <= _sample(text, "a700_oldest_unreported_event_age_seconds") <= time.time() - started + 0.001
    assert "a700_accept_latency_seconds_bucket" in text


def test_made_up_methods_are_counted_under_one_label(client):
    for method in ("FOOBAR", "BREW", "XYZZYPLUGH"):
        assert client.open("/api/billing/external-usage", method=method).status_code == 405
    text = client.get("/metrics").get_data(as_text=True)

    assert 'method="other"' in text
    for method in ("FOOBAR", "BREW", "XYZZYPLUGH"):
        assert f'method="{method}"' not in text
