"""Prometheus metrics of the web and worker processes, in prometheus-client's
multiprocess mode: every gunicorn worker and Celery pool process writes its own files
under ``PROMETHEUS_MULTIPROC_DIR``, and ``/metrics`` sums them.

The directory must be known before the first metric exists, so it is settled here, at
import: ``PROMETHEUS_MULTIPROC_DIR`` if set, else ``prometheus`` in the var directory
(``shared.config.var_dir``). Processes sharing a host share the directory (the local
run, one machine); on separate hosts each web process reports its host's processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared import config, stripe_meter

# prometheus-client takes the directory from the environment only (the metrics' files, the
# sum /metrics serves, the processes this one starts): it is put there for it.
_multiproc_dir = config.prometheus_multiproc_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _multiproc_dir
MULTIPROC_DIR = Path(_multiproc_dir)
MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values  # noqa: E402

# prometheus-client picks its value class once, when it is first imported, from the
# environment. The `celery` command imports it (through Flower's command plugin) before
# this module runs, so the worker would count in its own memory, where nobody scrapes:
# the metrics below are made multiprocess whoever imported the library first.
values.ValueClass = values.MultiProcessValue()

# Web
http_requests = Counter("a700_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
accept_latency = Histogram(
    "a700_accept_latency_seconds",
    "Time to answer a usage POST (auth, validation, enqueue).",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
events_accepted = Counter("a700_events_accepted_total", "Usage events accepted and queued.")
enqueue_failures = Counter("a700_enqueue_failures_total", "Publishes to the broker that failed (answered 503).")
replica_ack_failures = Counter(
    "a700_replica_ack_failures_total",
    "Publishes the primary took but too few replicas confirmed within REDIS_ACK_TIMEOUT_MS (answered 503 unknown).",
)

# Worker
events_recorded = Counter("a700_events_recorded_total", "Usage events written to user_billable_request_logs.")
events_rejected = Counter("a700_events_rejected_total", "Accepted events kept in rejected_usage_events.")
events_reported = Counter("a700_events_reported_total", "Log rows Stripe confirmed.")
events_failed = Counter("a700_events_failed_total", "Log rows marked failed (permanent Stripe refusal, no customer).")
stripe_calls = Counter("a700_stripe_requests_total", "Calls to Stripe Billing Meters by API and outcome.", ["api", "outcome"])
stripe_stream_refusals = Counter(
    "a700_stripe_stream_refusals_total",
    "Meter event stream calls Stripe refused as invalid (400), by Stripe's error code: each is split to find its events.",
    ["code"],
)
stripe_error_reports = Counter(
    "a700_stripe_error_reports_total", "Stripe's asynchronous error reports handled, by event type.", ["type"]
)
# Both series exist from the start, so the first report is an increase an alert can see.
for _type in stripe_meter.ERROR_REPORT_TYPES:
    stripe_error_reports.labels(_type)
# Stripe event fetches and their ends (the webhook's events; docs/operations.md)
stripe_event_fetches = Counter(
    "a700_stripe_event_fetches_total",
    "Fetches of a Stripe event by the worker, by result: fetched, refused (a final answer, e.g. 404), failed (retried).",
    ["result"],
)
stripe_events_unhandled = Counter(
    "a700_stripe_events_unhandled_total",
    "Stripe events ended without handling their report, by reason: refused (Stripe's final answer), expired (not "
    "fetched within a day).",
    ["reason"],
)
for _result in ("fetched", "refused", "failed"):
    stripe_event_fetches.labels(_result)
for _reason in ("refused", "expired"):
    stripe_events_unhandled.labels(_reason)
# Set once by each web and worker start (shared.start_checks). "mostrecent": the files of a
# host's dead processes stay in the directory, so the last start's settings are the answer
# (a restart with the secret set clears it), not the worst of every process since.
stripe_error_reports_blind = Gauge(
    "a700_stripe_error_reports_blind",
    "1 if STRIPE_METER_API is v2 and STRIPE_WEBHOOK_SECRET is not set (Stripe's reports of the meter events it "
    "drops cannot reach the service), else 0; from the settings of this host's last process start.",
    multiprocess_mode="mostrecent",
)
stripe_latency = Histogram(
    "a700_stripe_request_duration_seconds",
    "Duration of calls to Stripe Billing Meters.",
    ["api"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def registry() -> CollectorRegistry:
    """A registry summing every process's files (what ``/metrics`` serves)."""
    summed = CollectorRegistry()
    multiprocess.MultiProcessCollector(summed)
    return summed


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (gunicorn ``child_exit``, Celery pool shutdown)."""
    multiprocess.mark_process_dead(pid)

