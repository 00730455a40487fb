"""Per-request metrics and one structured log line per request, carrying the event id(s).

The line is where an event's trail starts: the worker logs the same ``event_id`` when it
records the row and when Stripe confirms it.
"""

from __future__ import annotations

import functools
import logging
import time

from flask import Flask, g, request

from shared import metrics

log = logging.getLogger("ingest_api.requests")
_TIMED_ROUTES = {"usage.record_usage", "usage.record_usage_batch"}
# The method is the caller's to choose (gunicorn takes any upper-case token); as a label,
# anything else would let a caller create metric series without end.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Each labelled series once per process: prometheus-client's labels() validates and
# looks up the label values under a lock on every call.
_requests_counter = functools.cache(metrics.http_requests.labels)
_latency_histogram = functools.cache(metrics.accept_latency.labels)


def register(app: Flask) -> None:
    @app.before_request
    def _start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def _count_and_log(response):
        elapsed = time.perf_counter() - g.pop("started", time.perf_counter())
        route = request.endpoint or "unmatched"
        method = request.method if request.method in _METHODS else "other"
        _requests_counter(route, method, response.status_code).inc()
        if route in _TIMED_ROUTES:
            _latency_histogram(route).observe(elapsed)
        fields = {
            "route": route,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed * 1000, 3),
        }
        event_ids = g.get("event_ids")
        if not event_ids and request.view_args and "event_id" in request.view_args:
            # GET .../<id>: the status asked about an event belongs to its trail too.
            event_ids = [str(request.view_args["event_id"])]
        if event_ids:
            if len(event_ids) == 1:
                fields["event_id"] = event_ids[0]
            else:
                fields["event_ids"] = event_ids
        if caller := g.get("caller"):
            fields["caller_user_id"] = str(caller.user_id)
        log.info("request", extra=fields)
        return response
