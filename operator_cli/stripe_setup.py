"""``stripe ensure-meter``: the billing meter this service reports to, created or verified;
with ``--check``, also what lets the service learn of the meter events Stripe drops.

Stripe counts a meter event only for an active meter of its ``event_name``; the v2 stream
takes events for no meter at all and drops them later. So before the first event, the
meter must exist as the service sends to it: event name ``STRIPE_METER_EVENT_NAME``, the
sum of ``payload.value`` per customer mapped from ``payload.stripe_customer_id``. The
reporters check the same (``shared.stripe_meter.setup_problem``) and send
nothing while it is missing or set up otherwise.

The v2 stream tells of what it drops only through an event destination sending the
meters' error reports to the web (``ingest_api.stripe_events``), verified with
``STRIPE_WEBHOOK_SECRET``; ``--check`` looks at both (the processes' start-time check,
``shared.start_checks``, can see only the secret).
"""

from __future__ import annotations

import dataclasses

import click
import stripe
from flask import current_app
from flask.cli import with_appcontext

from operator_cli import store
from shared import stripe_meter
from shared.config import Settings
from shared.stripe_client import stripe_client

# Where the web takes the error reports (its route, read from the app: one home).
WEBHOOK_ENDPOINT = "stripe_events.receive_stripe_event"


@dataclasses.dataclass(frozen=True)
class Finding:
    text: str
    failed: bool = False  # the check exits 1


@click.command("ensure-meter")
@with_appcontext
@click.option(
    "--check", is_flag=True,
    help="Only check; create nothing (exit 1 if the meter is not ready, or, with STRIPE_METER_API=v2, Stripe's "
    "reports of dropped events cannot reach the service).",
)
def ensure_meter(check: bool) -> None:
    """Create the billing meter if Stripe has none for the event name, or check the one it
    has; print its id.

    Refused (exit 1), with what to do, when the meter is inactive or aggregates otherwise
    than the service needs (a meter's aggregation cannot be changed in Stripe: deactivate
    it there, then run this again to create a new one). With ``--check`` and the v2
    stream, refused too when STRIPE_WEBHOOK_SECRET is unset or no enabled event
    destination sends both error report types as thin events; a key that may not read
    event destinations is told, not refused.
    """
    settings = store.current_settings()
    client = stripe_client(settings)
    event_name = settings.stripe_meter_event_name
    try:
        meters = client.v1.billing.meters.list({"limit": 100}).auto_paging_iter()
        meter, problem = stripe_meter.setup_problem(meters, event_name)
        if meter is None and not check:
            meter = _create_meter(client, settings)
            click.echo(f"Created billing meter {meter.id} for event name {event_name!r}.", err=True)
            click.echo(meter.id)
            return
        if problem is not None:
            findings = [Finding(problem, failed=True)]
        else:
            findings = [Finding(f"Billing meter {meter.id} for event name {event_name!r} is active and set up as the service sends.")]
        if check:
            findings += error_report_findings(client, settings)
    except stripe.StripeError as error:
        raise click.ClickException(f"Stripe could not be used: {error.user_message or error}") from None
    # What holds goes to standard error line by line; what fails is the one Error line.
    for finding in findings:
        if not finding.failed:
            click.echo(finding.text, err=True)
    if failed := [finding.text for finding in findings if finding.failed]:
        raise click.ClickException(" ".join(failed))
    click.echo(meter.id)


def _create_meter(client: stripe.StripeClient, settings: Settings):
    return client.v1.billing.meters.create(
        {
            "display_name": f"Agent700 usage ({settings.stripe_meter_event_name}, USD x 10^{settings.stripe_value_decimals})",
            "event_name": settings.stripe_meter_event_name,
            "default_aggregation": {"formula": stripe_meter.FORMULA},
            "customer_mapping": {"type": "by_id", "event_payload_key": stripe_meter.CUSTOMER_KEY},
            "value_settings": {"event_payload_key": stripe_meter.VALUE_KEY},
        }
    )


def error_report_findings(client: stripe.StripeClient, settings: Settings) -> list[Finding]:
    """What says whether the service can learn of the meter events Stripe drops: nothing to
    learn with v1 (each call answers with its outcome); with v2 the signing secret, and an
    event destination that sends the error reports."""
    if settings.stripe_meter_api != "v2":
        return [Finding("STRIPE_METER_API is v1: Stripe answers each meter event's call with its outcome; no event "
                        "destination is needed.")]
    findings = []
    if not settings.stripe_webhook_secret:
        findings.append(Finding(
            "STRIPE_WEBHOOK_SECRET is not set: the web refuses the event destination's deliveries, so the service "
            "cannot learn of the meter events Stripe drops; set it to the destination's signing secret (whsec_...).",
            failed=True,
        ))
    try:
        destinations = list(
            client.v2.core.event_destinations.list({"include": ["webhook_endpoint.url"]}).auto_paging_iter()
        )
    except (stripe.AuthenticationError, stripe.PermissionError) as error:
        # A restricted key without the event destinations' read permission: not knowing is
        # a finding, and no reason to refuse a check the key cannot make.
        return [*findings, Finding(
            f"Could not check the event destination: this API key may not read event destinations (Stripe answered "
            f"{error.http_status}). Check it in the Dashboard (Developers, Event destinations): enabled, thin events "
            f"of {' and '.join(stripe_meter.ERROR_REPORT_TYPES)}, to this service's {_webhook_path()}."
        )]
    return [*findings, _destination_finding(destinations)]


def _destination_finding(destinations: list) -> Finding:
    """The destination that sends the meters' error reports to a webhook, or why none does.

    One destination must send both types: the web verifies every delivery with one
    signing secret, and each destination has its own."""
    shortfalls = {destination.id: _shortfall(destination) for destination in destinations}
    sending = next((d for d in destinations if not shortfalls[d.id]), None)
    if sending is not None:
        url = getattr(sending.webhook_endpoint, "url", None) or "(its URL not shown)"
        note = "" if url.endswith(_webhook_path()) else f"; this service takes them at {_webhook_path()}"
        return Finding(
            f"Event destination {sending.id} ({sending.name!r}) is enabled and sends thin "
            f"{' and '.join(stripe_meter.ERROR_REPORT_TYPES)} events to {url}{note}."
        )
    why = "; ".join(f"{id_}: {', '.join(reasons)}" for id_, reasons in shortfalls.items())
    return Finding(
        "No enabled event destination sends the meters' error reports (thin events of "
        f"{' and '.join(stripe_meter.ERROR_REPORT_TYPES)}) to a webhook{f' ({why})' if why else ''}: the "
        "service cannot learn of the meter events Stripe drops; create one to this service's "
        f"{_webhook_path()} (README, Stripe setup).",
        failed=True,
    )


def _shortfall(destination) -> list[str]:
    """Why this destination does not bring the error reports to the web; empty if it does."""
    reasons = []
    if destination.status != "enabled":
        reasons.append(destination.status)
    if destination.type != "webhook_endpoint":
        reasons.append(f"type {destination.type}")
    if destination.event_payload != "thin":
        reasons.append(f"{destination.event_payload} events")
    reasons += [f"lacks {kind}" for kind in stripe_meter.ERROR_REPORT_TYPES if kind not in destination.enabled_events]
    return reasons


def _webhook_path() -> str:
    return next(rule.rule for rule in current_app.url_map.iter_rules(WEBHOOK_ENDPOINT))
