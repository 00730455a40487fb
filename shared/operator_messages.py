"""The reasons the pipeline writes for an operator to act on, each naming the operator
command that fixes it. They live here, in one place, so that renaming a command is one
edit, and so that no code decides anything by matching them: they are text for people
(a row's state is ``shared.usage_rows``'s columns, never its error message)."""

from __future__ import annotations

import uuid

RECONCILE_FIRST = (
    "Not reported within Stripe's 24-hour identifier window; run `stripe reconcile` for its "
    "organization before retrying, so it cannot be counted twice."
)
_NO_CUSTOMER = (
    "Organization {organization_id} has no Stripe customer id; set it with `flask --app ingest_api "
    "orgs set-stripe-customer --org {organization_id} --stripe-customer-id cus_...`, then "
    "`flask --app ingest_api usage retry --all-failed`."
)
_VOID_DROPPED = (
    "Stripe dropped this void's negative event after accepting it ({code}: {message}; "
    "error report {report_event_id}), so it bills the event again. Fix the cause, then void it again."
)
_DROPPED = (
    "Stripe dropped this meter event after accepting it ({code}: {message}; "
    "error report {report_event_id}). Fix the cause, then `usage retry`."
)
_UNHANDLED_STRIPE_EVENT = (
    "not handled: {why}; rows Stripe dropped in its window, if any, stay reported (`stripe reconcile` finds them)"
)


def no_stripe_customer(organization_id: uuid.UUID) -> str:
    return _NO_CUSTOMER.format(organization_id=organization_id)


def dropped_by_stripe(code: str, message: str, report_event_id: str) -> str:
    return _DROPPED.format(code=code, message=message.rstrip("."), report_event_id=report_event_id)


def void_dropped_by_stripe(code: str, message: str, report_event_id: str) -> str:
    return _VOID_DROPPED.format(code=code, message=message.rstrip("."), report_event_id=report_event_id)


def stripe_event_unhandled(why: str) -> str:
    return _UNHANDLED_STRIPE_EVENT.format(why=why)
