"""Logs: a capture of a full request-to-Stripe run (a real gunicorn, a real Celery worker
with beat, the local Stripe server) is JSON lines only, follows each event id from the
web's request line through the worker's "recorded" line and the Stripe call to the
"reported" line, and never contains a credential.

Non-JSON lines allowed: Celery's one-line shutdown notices (``worker: Warm shutdown
(MainProcess)``), which it writes to the terminal itself, and the ``===== start N =====``
marker the test harness writes into the worker's log file. The start banner is off
(``celery --quiet``, as in the Procfile), and Python warnings (e.g. Celery's superuser
warning) go through logging (``shared.structured_logging``).
"""

from __future__ import annotations

import concurrent.futures
import re
import uuid

import pytest

from devtools.children import wait_until
from shared import structured_logging
from shared.structured_logging import REDACTED, redact
from tests.support.billing import BATCH_URL, URL, status_counts
from tests.support.http_probes import http
from tests.support.log_lines import json_lines
from tests.support.service_processes import SETTLE_SECONDS

HARNESS_MARKER = "===== start "
CELERY_NOTICE = "worker: "


# --- redaction, unit by unit ------------------------------------------------------------------

APP_PASSWORD = "app_a7_" + "Zx9-_" * 9
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIwYjY0ZjJmZS0xYjA3LTQ1YjEtYWI1Yy1mNzU1ZTM3ZTc2ZTIiLCJleHAiOjE3MDAwMDAwMDB9"
    ".q0mW7vIk3f1tYw0mJt0qXn3n3uS2wq7uBqk9uY0r1xQ"
)


SHAPED_SECRETS = {
    "app-password": APP_PASSWORD,
    "jwt": JWT,
    "stripe-secret-test": "sk_test_51AbCdEfGhIjKlMnOpQrStUv",
    "stripe-secret-live": "sk_live_51AbCdEfGhIjKlMnOpQrStUv",
    "stripe-restricted": "rk_live_51AbCdEfGhIjKlMnOpQrStUv",
    "stripe-session": "ek_test_YWNjdF8xTjZaS1hJTXBrd3VzN0VM_00Kas2LZyN",
}
# Any token at all after a Bearer scheme (whatever its shape), e.g. an unknown App Password format.
OPAQUE = "opaque-token.with~odd+chars/="
BEARER_TEMPLATES = {
    "header": "Authorization: Bearer {secret}",
    "lower-case": "authorization: bearer {secret}",
    "json": '{{"headers": {{"Authorization": "Bearer {secret}"}}}}',
}
OTHER_TEMPLATES = {
    "query": "token={secret}&x=1",
    "quoted": "'{secret}'",
    "punctuated": "({secret}),",
    "bare": "{secret}",
}
CASES = [
    pytest.param(secret, template, id=f"{secret_id}-{template_id}")
    for secret_id, secret in SHAPED_SECRETS.items()
    for template_id, template in (BEARER_TEMPLATES | OTHER_TEMPLATES).items()
] + [pytest.param(OPAQUE, template, id=f"opaque-{template_id}") for template_id, template in BEARER_TEMPLATES.items()]


@pytest.mark.parametrize(("secret", "template"), CASES)
def test_redact_removes_every_credential_shape(secret, template):
    redacted = redact(template.format(secret=secret))
    assert secret not in redacted
    assert REDACTED in redacted
    # Nothing of the secret survives around the marker either (no partial leak).
    for piece in re.split(r"[^A-Za-z0-9]+", secret):
        if len(piece) >= 8:
            assert piece not in redacted, (piece, redacted)


def test_redact_leaves_ordinary_lines_alone():
    for text in (
        "usage events recorded",
        '{"event_ids": ["0b64f2fe-1b07-45b1-ab5c-f755e37e76e2"], "status": 202, "route": "usage.record_usage"}',
        "task_acks_late; app_a7 is a prefix; sk_test is a word; Bearer",
        "cus_test_123 mes_tok_ is not a key prefix we know",
    ):
        assert redact(text) == text


def test_the_json_formatter_redacts_messages_extras_and_tracebacks(capsys):
    import logging

    logger = logging.getLogger("tests.operations.redaction")
    handler = logging.StreamHandler()
    handler.setFormatter(structured_logging.formatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sent Bearer %s", APP_PASSWORD, extra={"jwt": JWT, "nested": {"key": "sk_live_51AbCdEfGh"}})
        try:
            raise ValueError(f"refused key sk_test_51AbCdEfGh and {JWT}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = capsys.readouterr().err
    for secret in (APP_PASSWORD, JWT, "sk_live_51AbCdEfGh", "sk_test_51AbCdEfGh"):
        assert secret not in output
    assert output.count(REDACTED) >= 5


# --- a full run, captured -------------------------------------------------------------------


def _has(record: dict, event_id: str) -> bool:
    return record.get("event_id") == event_id or event_id in (record.get("event_ids") or [])


@pytest.mark.slow
def test_a_full_run_logs_the_event_id_at_every_step_and_no_secret(settings, world, stripe, start_gunicorn, start_worker, metrics_dir):
    stripe_key = f"sk_test_a7logs{uuid.uuid4().hex}"
    run_settings = settings.replace(stripe_api_key=stripe_key)
    web = start_gunicorn(run_settings, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    worker = start_worker(run_settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    with_app_password = {"Authorization": f"Bearer {world.app_password}"}
    with_jwt = {"Authorization": f"Bearer {world.jwt}"}
    # Credentials that are refused must not be logged either.
    bogus_app_password = "app_a7_" + uuid.uuid4().hex + uuid.uuid4().hex
    bogus_jwt = world.jwt[:-6] + ("AAAAAA" if not world.jwt.endswith("AAAAAA") else "BBBBBB")

    event_ids = []
    status, _, body = http("POST", web.url + URL, json_body=world.body(), headers=with_app_password)
    assert status == 202, body
    event_ids.append(body["id"])
    status, _, body = http("POST", web.url + URL, json_body=world.body(input_tokens=7), headers=with_jwt)
    assert status == 202, body
    event_ids.append(body["id"])
    status, _, body = http(
        "POST", web.url + BATCH_URL, json_body={"events": [world.body(output_tokens=n) for n in (1, 2, 3)]}, headers=with_jwt
    )
    assert status == 200 and [r["status"] for r in body["results"]] == ["queued"] * 3, body
    batch_ids = [r["id"] for r in body["results"]]
    event_ids += batch_ids
    for bogus in (bogus_app_password, bogus_jwt):
        status, _, body = http("POST", web.url + URL, json_body=world.body(), headers={"Authorization": f"Bearer {bogus}"})
        assert status == 401, body

    wait_until(
        lambda: status_counts(run_settings).get("reported") == len(event_ids),
        SETTLE_SECONDS,
        message=lambda: f"{status_counts(run_settings)}\n{worker.log_tail()}\n{web.log_tail()}",
    )
    # The status, asked with the JWT (and once with the App Password), from several connections.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: http("GET", f"{web.url}{URL}/{i}", headers=with_jwt), event_ids))
    answers.append(http("GET", f"{web.url}{URL}/{event_ids[0]}", headers=with_app_password))
    for status, _, body in answers:
        assert status == 200 and body["status"] == "reported", body

    # Stop both the way production does (SIGTERM), so their shutdown lines are captured too.
    assert worker.terminate() == 0, worker.log_tail()
    assert web.terminate() == 0, web.log_tail()

    raw = {
        "web stderr": web.stderr_path.read_text(),
        "web stdout": web.stdout_path.read_text(),
        "worker": worker.log_path.read_text(),
    }
    assert raw["web stdout"].strip() == "", raw["web stdout"]
    web_lines = json_lines(web.stderr_path)
    worker_lines = json_lines(worker.log_path, skip=(HARNESS_MARKER, CELERY_NOTICE))
    for record in web_lines + worker_lines:
        assert {"time", "level", "name", "pid", "message"} <= set(record), record

    requests = [r for r in web_lines if r["name"] == "ingest_api.requests"]
    recorded = [r for r in worker_lines if r["message"] == "usage events recorded"]
    stripe_calls = [r for r in worker_lines if r["message"] == "stripe call" and r.get("outcome") == "ok"]
    reported = [r for r in worker_lines if r["message"] == "usage events reported to Stripe"]
    for event_id in event_ids:
        accepted = [r for r in requests if r["method"] == "POST" and _has(r, event_id)]
        assert [r["status"] for r in accepted] == [202 if event_id not in batch_ids else 200], (event_id, requests)
        status_lines = [r for r in requests if r["method"] == "GET" and _has(r, event_id)]
        assert status_lines and all(r["status"] == 200 for r in status_lines), (event_id, requests)
        assert any(_has(r, event_id) for r in recorded), (event_id, recorded)
        assert any(_has(r, event_id) and r["call"].startswith(("v2_stream", "v1_meter_event")) for r in stripe_calls), (
            event_id, stripe_calls,
        )
        assert any(_has(r, event_id) for r in reported), (event_id, reported)
    # The refused requests have their line too (without a caller or an event id).
    refused = [r for r in requests if r["status"] == 401]
    assert len(refused) == 2 and not any("event_id" in r or "caller_user_id" in r for r in refused), refused

    session_tokens = list(stripe.state.store._sessions)
    assert session_tokens, "the v2 path opened no meter event session"
    secrets = {
        "App Password": world.app_password,
        "JWT": world.jwt,
        "refused App Password": bogus_app_password,
        "refused JWT": bogus_jwt,
        "Stripe API key": stripe_key,
        "JWT secret": run_settings.jwt_secret,
        **{f"meter event session token {n}": token for n, token in enumerate(session_tokens)},
    }
    for source, text in raw.items():
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} is in the {source} log"
            assert f"Bearer {secret}" not in text
        assert not re.search(r"Bearer (?!\[redacted\])\S", text, re.IGNORECASE), f"a Bearer value in the {source} log"
