"""What a service process says of its settings once it has started and logs JSON lines:
the web's gunicorn master (``on_starting``, ``shared.gunicorn_config``) and the worker's
main process (``celeryd_init``, ``worker.process_lifecycle``).

``shared.config`` refuses settings the service cannot run with; this is for settings it
runs with but cannot watch everything under: a WARNING in the log at each start, and a
gauge on ``/metrics`` that an alert fires on (``deploy/prometheus/alerts.yml``).
"""

from __future__ import annotations

import logging

from shared import metrics
from shared.config import Settings

log = logging.getLogger(__name__)

ERROR_REPORTS_BLIND = (
    "STRIPE_METER_API is v2 and STRIPE_WEBHOOK_SECRET is not set: this service cannot learn of the meter events "
    "Stripe drops. The v2 stream validates events after accepting them and tells of the ones it drops only "
    "through an event destination, whose deliveries are refused without that secret, so a dropped event's row "
    "stays reported. Create the event destination (thin events v1.billing.meter.error_report_triggered and "
    "v1.billing.meter.no_meter_found to POST /api/stripe/events; `stripe ensure-meter --check` checks it) and "
    "set its signing secret (whsec_...) as STRIPE_WEBHOOK_SECRET."
)


def check(settings: Settings) -> None:
    """Warn of what these settings leave unwatched, and set its gauge (0 once fixed)."""
    blind = settings.stripe_error_reports_blind
    metrics.stripe_error_reports_blind.set(1 if blind else 0)
    if blind:
        log.warning(ERROR_REPORTS_BLIND, extra={"stripe_meter_api": settings.stripe_meter_api})
