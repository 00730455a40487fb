"""The billing window: how old, and how far ahead, a usage event's ``occurred_at`` may be.

Stripe Billing Meters count an event at most 35 days older and 5 minutes newer than its
receipt (changelog 2026-04-22.dahlia). The service keeps two margins inside that rule,
so that an event the edge accepts is not one Stripe drops:

- the reporter sends nothing within ``SEND_MARGIN`` of Stripe's limit (the time a meter
  event spends in transit and in Stripe's own queue);
- the edge accepts nothing older than ``MAX_ACCEPTED_AGE``, a day inside Stripe's limit:
  what an accepted event may spend in our own pipeline (recording, reporting, an outage
  of PostgreSQL or Stripe) before it is too old to send. An outage longer than that is
  what ``a700_events_aging_out`` and its alert announce ``AGING_OUT_WARNING`` ahead.

The edge, the reporter and the gauge all derive their limits from here.
"""

from __future__ import annotations

import datetime as dt

STRIPE_MAX_AGE = dt.timedelta(days=35)
STRIPE_MAX_LEAD = dt.timedelta(minutes=5)
SEND_MARGIN = dt.timedelta(minutes=5)
# The reporter sends an event up to this age, and fails it as too old after.
MAX_SENT_AGE = STRIPE_MAX_AGE - SEND_MARGIN
PIPELINE_MARGIN = dt.timedelta(days=1)
MAX_ACCEPTED_AGE = STRIPE_MAX_AGE - PIPELINE_MARGIN
# The edge takes a caller's clock up to Stripe's own lead ahead: by the time the event
# is sent, it is less far ahead than when it was received.
MAX_ACCEPTED_LEAD = STRIPE_MAX_LEAD
# How long before an unreported event becomes too old to send the gauge counts it.
AGING_OUT_WARNING = dt.timedelta(hours=12)


def aging_out_cutoff(now: dt.datetime) -> dt.datetime:
    """Events that occurred before this will be too old to send within ``AGING_OUT_WARNING``."""
    return now - MAX_SENT_AGE + AGING_OUT_WARNING


# An accepted event occurred at most MAX_ACCEPTED_AGE before it entered the intake, so
# only an intake entry that has waited at least this long can be ageing out (23 h 55 min
# margin less the 12 h warning: 11 h 55 min).
INTAKE_WAIT_BEFORE_AGING_OUT = MAX_SENT_AGE - MAX_ACCEPTED_AGE - AGING_OUT_WARNING
