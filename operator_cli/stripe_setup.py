"""``stripe ensure-meter``: the billing meter this service reports to, created or verified.

Stripe counts a meter event only for an active meter of its ``event_name``; the v2 stream
takes events for no meter at all and drops them later. So before the first event, the
meter must exist as the service sends to it: event name ``STRIPE_METER_EVENT_NAME``, the
sum of ``payload.value`` per customer mapped from ``payload.stripe_customer_id``. The
reporters check the same (``shared.stripe_meter.setup_problem``) and send
nothing while it is missing or set up otherwise.
"""

from __future__ import annotations

import click
import stripe
from flask.cli import with_appcontext

from operator_cli import store
from shared import stripe_meter
from shared.stripe_client import stripe_client


@click.command("ensure-meter")
@with_appcontext
@click.option("--check", is_flag=True, help="Only check; create nothing (exit 1 if the meter is not ready).")
def ensure_meter(check: bool) -> None:
    """Create the billing meter if Stripe has none for the event name, or check the one it
    has; print its id.

    Refused (exit 1), with what to do, when the meter is inactive or aggregates otherwise
    than the service needs (a meter's aggregation cannot be changed in Stripe: deactivate
    it there, then run this again to create a new one).
    """
    settings = store.current_settings()
    client = stripe_client(settings)
    event_name = settings.stripe_meter_event_name
    try:
        meters = client.v1.billing.meters.list({"limit": 100}).auto_paging_iter()
        meter, problem = stripe_meter.setup_problem(meters, event_name)
        if meter is None and not check:
            meter = client.v1.billing.meters.create(
                {
                    "display_name": f"Agent700 usage ({event_name}, USD x 10^{settings.stripe_value_decimals})",
                    "event_name": event_name,
                    "default_aggregation": {"formula": stripe_meter.FORMULA},
                    "customer_mapping": {"type": "by_id", "event_payload_key": stripe_meter.CUSTOMER_KEY},
                    "value_settings": {"event_payload_key": stripe_meter.VALUE_KEY},
                }
            )
            click.echo(f"Created billing meter {meter.id} for event name {event_name!r}.", err=True)
            click.echo(meter.id)
            return
    except stripe.StripeError as error:
        raise click.ClickException(f"Stripe could not be used: {error.user_message or error}") from None
    if problem is not None:
        raise click.ClickException(problem)
    click.echo(f"Billing meter {meter.id} for event name {event_name!r} is active and set up as the service sends.", err=True)
    click.echo(meter.id)
