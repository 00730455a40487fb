"""The start-time checks (``shared.start_checks``) in the processes as the Procfile runs
them: a web and a worker started with ``STRIPE_METER_API=v2`` and no
``STRIPE_WEBHOOK_SECRET`` (the tests' processes get no ``STRIPE_*`` but what they are
given) each log the WARNING once, as a JSON line, and the web's ``/metrics`` has the gauge
at 1."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.children import http_get, wait_until
from shared import start_checks
from tests.support.log_lines import json_lines
from tests.support.service_processes import SETTLE_SECONDS

pytestmark = pytest.mark.slow

HARNESS_MARKER = "===== start "


def blind_warnings(path) -> list[dict]:
    return [
        line for line in json_lines(path, skip=(HARNESS_MARKER, "worker: "))
        if line["level"] == "WARNING" and line["message"] == start_checks.ERROR_REPORTS_BLIND
    ]


def blind_gauge(metrics_text: str) -> list[float]:
    return [
        sample.value for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples if sample.name == "a700_stripe_error_reports_blind"
    ]


def test_a_blind_web_start_warns_once_and_its_metrics_say_so(settings, start_gunicorn, metrics_dir):
    web = start_gunicorn(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), STRIPE_METER_API="v2")

    assert len(blind_warnings(web.stderr_path)) == 1  # the master's, not one per worker
    assert blind_gauge(http_get(f"{web.url}/metrics")[1].decode()) == [1]


def test_a_blind_worker_start_warns(settings, start_worker, metrics_dir):
    worker = start_worker(settings, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), STRIPE_METER_API="v2")

    wait_until(lambda: blind_warnings(worker.log_path), SETTLE_SECONDS, message=lambda: worker.log_tail())
    assert len(blind_warnings(worker.log_path)) == 1
