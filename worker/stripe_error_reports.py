"""What Stripe's asynchronous error reports mean for the rows: which reported rows Stripe
dropped, marked ``failed`` with Stripe's reason.

The v2 meter event stream answers before it validates. Stripe drops the events it cannot
count later and says so only in an event: ``v1.billing.meter.error_report_triggered``
(per meter) or ``v1.billing.meter.no_meter_found``, each for a validation window of
Stripe's choosing, with how many events of each error type it dropped and a few samples.
A sample names its request: Stripe documents ``request.identifier`` as the request's
idempotency key, which every reported row keeps with its call's start
(``stripe_request_key``, ``stripe_reported_at``); the event identifier (the row id) is
matched too, as Stripe's wire format is not certain here. The window's rows are the rows
whose call started in it (a minute's slack either side for the clocks), and the rows of
every request a sample names. The rows concerned are found, each with Stripe's reason:

1. a sample naming one row (its id, or a request that carried only it) drops that row;
2. no meter drops the window's events of the event names concerned: those of the rows
   the samples name, and those that have no meter now; an inactive meter every event
   sent since it was deactivated;
3. an unknown customer drops every event for it: the window's rows of the customers
   Stripe does not know;
4. a timestamp or a value Stripe refuses: the window's rows that break its rule;
5. while fewer are found than Stripe counted, the window's other rows are compared
   with Stripe's meter event summaries, per customer and minute of ``occurred_at``: where
   Stripe counts less, the rows it lacks are failed (all of the minute's, if the
   difference does not say which). Summaries are eventually consistent, so this waits
   until the window is settled: ``STRIPE_SUMMARY_SETTLE_SECONDS`` after its end
   (``SummariesNotSettled``; the task comes back then). Until then nothing of the report
   is applied.

A sample naming a void's negative event (its call's key, or ``void-<row id>``) fails
that void, and its row is billed again (``usage_voids.dropped``); asking for the void
again sends the negative event afresh.

A failed row goes back to Stripe with ``usage retry`` once its cause is fixed: Stripe
keeps no identifier of an event it dropped, so the retry is counted once; one it did
count is deduplicated by its identifier within 24 h of its first send, and after that is
sent again only once ``stripe reconcile`` showed Stripe lacks it (``shared.usage_rows``).

Fetching the event ends: a final answer from Stripe (404: an expired event, another
account's, another mode's) ends it at once, unhandled; a failure that may pass (429, 5xx,
no connection) is retried after ``retry_delay``, until the event is ``MAX_AGE`` old, when
it is ended unhandled too. Either way the row's ``outcome`` says why, with a WARNING.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
import stripe
from sqlalchemy import orm

from shared import models, operator_messages, stripe_meter, usage_voids
from shared.stripe_meter import TIMESTAMP_CODES, VALUE_CODES

log = logging.getLogger(__name__)
# A row's stripe_reported_at is the start of its call, which Stripe received a moment
# later; a minute either side of the validation window covers that and the clocks'
# difference.
WINDOW_SLACK = dt.timedelta(minutes=1)
MINUTE = stripe_meter.MINUTE
# Retries of a fetch that may succeed later: 2 s doubling to 5 minutes (with jitter), the
# cap well under the broker's visibility timeout (1 h), which a countdown must not reach.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0
# Stripe retries an unanswered delivery for 3 days; an event we cannot fetch for a day has
# met an outage far longer than any Stripe has had: its report is given up, with a warning.
MAX_AGE = dt.timedelta(hours=24)
# Answers that may change while the event does not: a rate limit, a lock held (409), a key
# an operator can fix (401, 403). Any other 4xx is Stripe's final word on the event.
_TRANSIENT_4XX = frozenset({401, 403, 409, 429})
_logs = models.UserBillableRequestLog


class SummariesNotSettled(Exception):
    """Only Stripe's summaries can tell which rows it dropped, and they may still be
    catching up: ask again at ``settles_at``."""

    def __init__(self, settles_at: dt.datetime):
        super().__init__(f"the summaries of the window settle at {settles_at.isoformat()}")
        self.settles_at = settles_at


@dataclass(frozen=True)
class ErrorType:
    code: str
    count: int
    samples: dict[str, str]  # identifier -> Stripe's message


@dataclass(frozen=True)
class ErrorReport:
    event_id: str
    type: str
    meter_id: str | None
    start: dt.datetime
    end: dt.datetime
    summary: str
    error_types: list[ErrorType]

    @property
    def error_count(self) -> int:
        return sum(error_type.count for error_type in self.error_types)

    @classmethod
    def from_event(cls, event) -> ErrorReport:
        """From the full event as ``client.v2.core.events.retrieve`` gives it."""
        data = event.data
        related = getattr(event, "related_object", None)
        return cls(
            event_id=event.id,
            type=event.type,
            meter_id=getattr(related, "id", None) or None,
            start=stripe_meter.parse_time(data.validation_start),
            end=stripe_meter.parse_time(data.validation_end),
            summary=getattr(data, "developer_message_summary", "") or "",
            error_types=[
                ErrorType(
                    code=error_type.code,
                    count=error_type.error_count,
                    samples={sample.request.identifier: sample.error_message for sample in error_type.sample_errors or []},
                )
                for error_type in data.reason.error_types
            ],
        )


def dropped_rows(
    session: orm.Session, client: stripe.StripeClient, report: ErrorReport, settled_after: dt.timedelta,
    voids_dropped: int = 0,
) -> dict[uuid.UUID, str]:
    """The reported rows Stripe dropped, each with the reason written on it (of the errors
    reported, ``voids_dropped`` were voids' negative events). Raises
    ``SummariesNotSettled`` while only summaries that may still lag could tell the rest."""
    rows = _window_rows(session, report)
    codes = {error_type.code for error_type in report.error_types}
    dropped: dict[uuid.UUID, str] = {}

    def drop(row, code: str, message: str) -> None:
        dropped.setdefault(row.id, _reason(report, code, message))

    named_event_names = _drop_sampled(rows, report, drop)
    rest = [row for row in rows if row.id not in dropped]
    if report.type == stripe_meter.NO_METER_FOUND or "no_meter" in codes:
        names = named_event_names | _without_meter(client, {row.stripe_event_name for row in rest} - {None})
        for row in rest:
            # A row sent before its call was kept has no event name: possibly this one.
            if row.stripe_event_name is None or row.stripe_event_name in names:
                drop(row, "no_meter", report.summary or "Stripe has no meter for the event.")
    if "archived_meter" in codes and report.meter_id:
        # Every event received while the meter is inactive is dropped, whatever its value.
        deactivated_at = client.v1.billing.meters.retrieve(report.meter_id).status_transitions.deactivated_at
        if deactivated_at:
            since = dt.datetime.fromtimestamp(deactivated_at, dt.UTC)
            for row in rest:
                if row.stripe_reported_at >= since:
                    drop(row, "archived_meter", f"The meter {report.meter_id} has been inactive since {since.isoformat()}.")
    if "meter_event_customer_not_found" in codes:
        unknown = {customer for customer in {row.stripe_customer_id for row in rest} if not _customer_exists(client, customer)}
        for row in rest:
            if row.stripe_customer_id in unknown:
                drop(row, "meter_event_customer_not_found", f"No such customer: '{row.stripe_customer_id}'")
    if codes & (TIMESTAMP_CODES | VALUE_CODES):
        for row in rest:
            event = stripe_meter.MeterEvent(row.id, row.stripe_customer_id, row.stripe_value, row.occurred_at)
            if (problem := stripe_meter.unsendable(event, row.stripe_reported_at)) is not None:
                drop(row, next(iter(codes & (TIMESTAMP_CODES | VALUE_CODES))), problem)
    if len(dropped) + voids_dropped < report.error_count and report.meter_id:
        if dt.datetime.now(dt.UTC) < report.end + settled_after:
            raise SummariesNotSettled(report.end + settled_after)
        code = report.error_types[0].code if len(report.error_types) == 1 else "summaries"
        lacking = _lacking_in_summaries(session, client, report.meter_id, [r for r in rows if r.id not in dropped], set(dropped))
        for row_id, message in lacking.items():
            dropped.setdefault(row_id, _reason(report, code, message))
    return dropped


def dropped_voids(session: orm.Session, report: ErrorReport) -> dict[uuid.UUID, str]:
    """The voids whose negative events the samples name (by the call's key or the event's
    ``void-<row id>`` identifier), each with Stripe's reason: Stripe dropped them."""
    messages = {
        identifier: (error_type.code, message)
        for error_type in report.error_types for identifier, message in error_type.samples.items()
    }
    voids = session.execute(
        sa.select(models.UsageVoid.row_id, models.UsageVoid.stripe_request_key, models.UsageVoid.stripe_identifier).where(
            models.UsageVoid.method == models.VoidMethod.STRIPE_NEGATIVE_EVENT,
            sa.or_(models.UsageVoid.stripe_request_key.in_(messages), models.UsageVoid.stripe_identifier.in_(messages)),
        )
    ).all()
    return {
        void.row_id: operator_messages.void_dropped_by_stripe(
            *messages.get(void.stripe_request_key) or messages[void.stripe_identifier], report.event_id,
        )
        for void in voids
    }


def _window_rows(session: orm.Session, report: ErrorReport):
    """The reported rows whose call started in the report's window, and those of the
    requests (or ids) its samples name."""
    named = {identifier for error_type in report.error_types for identifier in error_type.samples}
    named_ids = [row_id for row_id in map(_as_uuid, named) if row_id is not None]
    return session.execute(
        sa.select(
            _logs.id, _logs.stripe_value, _logs.occurred_at, _logs.stripe_reported_at, _logs.stripe_request_key,
            _logs.stripe_event_name, models.Organization.stripe_customer_id,
        )
        .join(models.Organization, models.Organization.id == _logs.organization_id)
        .where(
            _logs.status == models.UsageStatus.REPORTED,
            sa.or_(
                sa.and_(
                    _logs.stripe_reported_at >= report.start - WINDOW_SLACK,
                    _logs.stripe_reported_at <= report.end + WINDOW_SLACK,
                ),
                _logs.stripe_request_key.in_(named),
                _logs.id.in_(named_ids),
            ),
        )
    ).all()


def _drop_sampled(rows, report: ErrorReport, drop) -> set[str]:
    """Drop the rows the samples name one by one; the event names of every row a sample
    names (a request of many rows names them all, not which one)."""
    by_id = {str(row.id): [row] for row in rows}
    by_request: dict[str, list] = defaultdict(list)
    for row in rows:
        if row.stripe_request_key:
            by_request[row.stripe_request_key].append(row)
    event_names = set()
    for error_type in report.error_types:
        for identifier, message in error_type.samples.items():
            carried = by_id.get(identifier) or by_request.get(identifier, [])
            if len(carried) == 1:
                drop(carried[0], error_type.code, message)
            event_names |= {row.stripe_event_name for row in carried if row.stripe_event_name}
    return event_names


def _without_meter(client: stripe.StripeClient, event_names: set[str]) -> set[str]:
    """Those of the event names no meter of Stripe's counts, active or not."""
    if not event_names:
        return set()
    metered = {meter.event_name for meter in client.v1.billing.meters.list({"limit": stripe_meter.PAGE_SIZE}).auto_paging_iter()}
    return event_names - metered


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _reason(report: ErrorReport, code: str, message: str) -> str:
    return operator_messages.dropped_by_stripe(code, message, report.event_id)


def _customer_exists(client: stripe.StripeClient, customer_id: str) -> bool:
    try:
        return not getattr(client.v1.customers.retrieve(customer_id), "deleted", False)
    except stripe.InvalidRequestError as error:
        if error.http_status == 404:
            return False
        raise


def _lacking_in_summaries(
    session: orm.Session, client: stripe.StripeClient, meter_id: str, candidates, known_dropped: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Candidates Stripe's summaries lack, by customer and minute of their ``occurred_at``
    (the rows already known dropped are not expected at Stripe)."""
    groups: dict[tuple[str, dt.datetime], list] = defaultdict(list)
    for row in candidates:
        groups[row.stripe_customer_id, row.occurred_at.astimezone(dt.UTC).replace(second=0, microsecond=0)].append(row)
    lacking: dict[uuid.UUID, str] = {}
    for (customer, minute), group in groups.items():
        at_stripe = stripe_meter.counted(client, meter_id, customer, minute, minute + MINUTE)
        here = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(_logs.stripe_value), 0))
            .join(models.Organization, models.Organization.id == _logs.organization_id)
            .where(
                models.Organization.stripe_customer_id == customer,
                usage_voids.billed_at_stripe(),
                _logs.occurred_at >= minute,
                _logs.occurred_at < minute + MINUTE,
                _logs.id.notin_(known_dropped) if known_dropped else sa.true(),
            )
        )
        missing = Decimal(here) - at_stripe
        if missing <= 0:
            continue
        which, _ = stripe_meter.rows_stripe_lacks(group, missing)
        for row in which:
            lacking[row.id] = (
                f"Stripe's summary for {customer} at {minute.isoformat()} lacks {missing} of the {here} reported"
                + ("" if which is not group or len(group) == 1 else "; which of the minute's events is not known, so all are retried")
            )
    return lacking


def claim(session: orm.Session, event_id: str) -> bool:
    """Lock the event's record; False if it was handled already (a second delivery of
    its task)."""
    handled_at = session.scalar(
        sa.select(models.StripeEvent.handled_at).where(models.StripeEvent.id == event_id).with_for_update()
    )
    return handled_at is None


def handled(session: orm.Session, event_id: str, outcome: str) -> bool:
    """Record the event's outcome; False if it was handled already."""
    return bool(
        session.execute(
            sa.update(models.StripeEvent)
            .where(models.StripeEvent.id == event_id, models.StripeEvent.handled_at.is_(None))
            .values(handled_at=sa.func.now(), outcome=outcome)
        ).rowcount
    )


def is_final(error: stripe.StripeError) -> bool:
    """Stripe's answer will not change by asking again (404 and the like)."""
    status = error.http_status
    return status is not None and 400 <= status < 500 and status not in _TRANSIENT_4XX


def retry_delay(attempt: int) -> float:
    """Seconds before fetch retry ``attempt`` (0 first): exponential, capped, jittered
    (between half and all of it, so that events failed together do not retry together)."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2**attempt) * random.uniform(0.5, 1.0)


def received_at(session: orm.Session, event_id: str) -> tuple[dt.datetime | None, bool]:
    """When the event was received (None: no record, so nothing to handle it for), and
    whether it is handled."""
    row = session.execute(
        sa.select(models.StripeEvent.received_at, models.StripeEvent.handled_at).where(models.StripeEvent.id == event_id)
    ).first()
    return (None, False) if row is None else (row.received_at, row.handled_at is not None)
