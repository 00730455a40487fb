"""After the load: wait for the pipeline to drain, then reconcile three independent records.

* the load generator's ledger: every event id it was answered 2xx, with the cost it
  computed itself;
* the database: ``user_billable_request_logs``;
* the Stripe server: every meter event it received (``/_local/meter_events``).

Lost: an accepted event without a row, or without a meter event. Duplicated: an event
(the same content, or the same Idempotency-Key) behind two ids, or one identifier twice
at Stripe. Unequal: any organization's ``agent700_cost`` total in the database differing
from the ledger's, or Stripe's value total differing from the ledger's sum of
``round_half_even(cost × 10^STRIPE_VALUE_DECIMALS)`` per event. Any of them fails the run.

Voids (``soak.voids``): a voided event keeps its row (status ``voided``, its void
``completed``) and nothing of it may stay billed at Stripe: its meter event canceled (or
never sent, or taken back by a ``void-<id>`` negative event). Stripe's total per
organization is what it counts: its meter event summaries (cancels and negative events
applied), and the same from its meter events (the canceled left out, the negative in);
both must equal the database's sum over its reported rows and the ledger's sum over the
events it did not void. A void pending after the drain, a failed one, one the client was
answered for and the database lacks (or the reverse), a voided row that Stripe still
counts or a row whose event was canceled although it was never voided fails the run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import decimal
import json
import time
from decimal import Decimal
from pathlib import Path

import redis
import sqlalchemy as sa

from shared import intake
from shared.usage_voids import NEGATIVE_IDENTIFIER
from soak.load import EXACT, Ledger, PlannedEvent
from soak.seeding import Organization, World
from soak.voids import VoidLedger, ledger_summary

NEGATIVE_PREFIX = NEGATIVE_IDENTIFIER.format(row_id="")

# How often the drain is looked at, and for how many looks in a row it must be settled.
DRAIN_POLL_SECONDS = 1.0
DRAIN_SETTLED_LOOKS = 3
EXAMPLES_SHOWN = 5


def _database(database_url: str) -> sa.Engine:
    return sa.create_engine(database_url, poolclass=sa.pool.NullPool)


def pipeline_state(database_url: str, broker: redis.Redis) -> dict:
    """Rows by status, and what the intake stream still holds."""
    with _database(database_url).connect() as connection:
        by_status = dict(connection.execute(sa.text("SELECT status, count(*) FROM user_billable_request_logs GROUP BY status")).all())
        rejected = connection.scalar(sa.text("SELECT count(*) FROM rejected_usage_events WHERE resolved_at IS NULL"))
        voids = dict(connection.execute(sa.text("SELECT state, count(*) FROM usage_voids GROUP BY state")).all())
    pending = 0
    with contextlib.suppress(redis.ResponseError):  # no consumer group yet
        pending = broker.xpending(intake.STREAM, intake.GROUP)["pending"]
    return {
        "rows_by_status": by_status,
        "voids_by_state": voids,
        "rejected_events": rejected,
        "stream_entries": broker.xlen(intake.STREAM),
        "stream_pending": pending,
    }


def wait_for_drain(database_url: str, broker: redis.Redis, timeout: float, watch) -> dict:
    """Until nothing is queued and every row is reported or failed (a few looks in a row)."""
    started = time.monotonic()
    settled_looks = 0
    state: dict = {}
    while time.monotonic() - started < timeout:
        watch()
        try:
            state = pipeline_state(database_url, broker)
        except (sa.exc.OperationalError, redis.RedisError) as error:
            state = {"error": str(error)}
            settled_looks = 0
        else:
            settled = state["stream_entries"] == 0 and state["stream_pending"] == 0 and state["rows_by_status"].get("recorded", 0) == 0
            settled_looks = settled_looks + 1 if settled else 0
            if settled_looks >= DRAIN_SETTLED_LOOKS:
                return {"drained": True, "seconds": round(time.monotonic() - started, 1), "state": state}
        time.sleep(DRAIN_POLL_SECONDS)
    return {"drained": False, "seconds": round(time.monotonic() - started, 1), "state": state}


def wait_for_voids(database_url: str, timeout: float, watch) -> dict:
    """Until no void is pending (a few looks in a row): each done, or failed."""
    started = time.monotonic()
    settled_looks = 0
    by_state: dict = {}
    while time.monotonic() - started < timeout:
        watch()
        try:
            with _database(database_url).connect() as connection:
                by_state = dict(connection.execute(sa.text("SELECT state, count(*) FROM usage_voids GROUP BY state")).all())
        except sa.exc.OperationalError as error:
            by_state = {"error": str(error)}
            settled_looks = 0
        else:
            settled_looks = settled_looks + 1 if by_state.get("pending", 0) == 0 else 0
            if settled_looks >= DRAIN_SETTLED_LOOKS:
                return {"drained": True, "seconds": round(time.monotonic() - started, 1), "voids_by_state": by_state}
        time.sleep(DRAIN_POLL_SECONDS)
    return {"drained": False, "seconds": round(time.monotonic() - started, 1), "voids_by_state": by_state}


def _voids(database_url: str) -> dict[str, sa.Row]:
    with _database(database_url).connect() as connection:
        voids = connection.execute(
            sa.text(
                "SELECT row_id::text AS row_id, reason, method, state, error, stripe_attempts, requested_at, completed_at"
                " FROM usage_voids"
            )
        ).all()
    return {void.row_id: void for void in voids}


def _rows(database_url: str) -> dict[str, sa.Row]:
    with _database(database_url).connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT id::text AS id, organization_id::text AS organization_id, agent700_cost, stripe_value, status,"
                " error, received_at, stripe_reported_at, occurred_at, input_tokens, output_tokens"
                " FROM user_billable_request_logs"
            )
        ).all()
    return {row.id: row for row in rows}


def _content(row) -> tuple:
    return (row.organization_id, row.occurred_at, row.input_tokens, row.output_tokens)


def exact_sum(values) -> Decimal:
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


def percentiles(values: list[float], digits: int = 3) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def nearest_rank(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(share * len(ordered) + 0.5) - 1))], digits)

    return {
        "count": len(ordered), "p50": nearest_rank(0.50), "p90": nearest_rank(0.90),
        "p99": nearest_rank(0.99), "max": round(ordered[-1], digits),
    }


def _by_kind(counter: collections.Counter) -> dict:
    table: dict[str, dict[str, int]] = {}
    for (kind, outcome), count in sorted(counter.items()):
        table.setdefault(kind, {})[outcome] = count
    return table


@dataclasses.dataclass(frozen=True)
class _Findings:
    """What the ledger, the database's rows and Stripe's meter events say of each other."""

    rows: dict[str, sa.Row]
    ambiguous_accepted: dict[str, PlannedEvent]  # sent without a key, answer lost, found in the rows
    phantom_ids: list[str]  # rows no client was answered for
    expected: dict[str, PlannedEvent]  # every event that must be billed, by id
    lost_without_row: list[str]
    lost_without_meter_event: list[str]
    not_reported: list[str]
    duplicate_rows: int
    duplicate_meter_events: int
    meter_events_without_row: list[str]
    cost_mismatches: list[str]
    value_mismatches: list[str]
    voids: _VoidFindings

    @property
    def lost(self) -> int:
        return len(self.lost_without_row) + len(set(self.lost_without_meter_event) | set(self.not_reported))


@dataclasses.dataclass(frozen=True)
class _VoidFindings:
    """The database's voids against the client's ledger of them, and what Stripe counts of
    each voided row."""

    voids: dict[str, sa.Row]  # usage_voids, by row id
    voided: set[str]  # rows taken back: status voided and their void completed
    client_voided: set[str]  # the events a 2xx answer of the void endpoint named a void for
    pending: list[str]
    failed: list[str]
    row_and_void_disagree: list[str]  # status voided without a completed void, or the reverse
    asked_not_in_database: list[str]  # answered 2xx, yet no void in the database
    in_database_not_asked: list[str]  # a void no client was answered for
    reason_mismatches: list[str]  # the database's reason is not the one the answers named
    still_billed: list[str]  # voided, yet Stripe counts something of it
    canceled_not_voided: list[str]  # not voided, yet its meter event was canceled or taken back
    negative_value_mismatches: list[str]  # a void-<id> event whose value is not minus the row's

    @property
    def problems(self) -> int:
        return sum(
            len(getattr(self, name)) for name in (
                "pending", "failed", "row_and_void_disagree", "asked_not_in_database", "in_database_not_asked",
                "reason_mismatches", "still_billed", "canceled_not_voided", "negative_value_mismatches",
            )
        )


def reconcile(
    database_url: str, stripe_events: list[dict], ledger: Ledger, world: World, decimals: int,
    void_ledger: VoidLedger | None = None, stripe_summaries: dict[str, int | None] | None = None,
) -> dict:
    """``stripe_summaries``: each customer's total in Stripe's meter event summaries (None:
    not read; the meter events' count stands alone)."""
    void_ledger = (void_ledger or VoidLedger()).frozen()
    found = _compare(_rows(database_url), _voids(database_url), stripe_events, ledger, void_ledger)
    organizations = [
        _organization_totals(organization, found, stripe_events, decimals, (stripe_summaries or {}).get(organization.stripe_customer_id))
        for organization in world.organizations
    ]
    return _summary(found, stripe_events, ledger, void_ledger, organizations)


def counted(event: dict) -> bool:
    """Whether Stripe counts the meter event (canceled ones leave its summaries)."""
    return event.get("canceled_at") is None


def _compare(
    rows: dict[str, sa.Row], voids: dict[str, sa.Row], stripe_events: list[dict], ledger: Ledger, void_ledger: VoidLedger
) -> _Findings:
    accepted = dict(ledger.accepted)
    # Rows the ledger does not know: an event sent without a key whose answer was lost
    # (matched by content: accepted after all), or a row nobody was told about.
    unknown_ids = rows.keys() - accepted.keys()
    ambiguous_accepted = {i: ledger.ambiguous[_content(rows[i])] for i in unknown_ids if _content(rows[i]) in ledger.ambiguous}
    expected: dict[str, PlannedEvent] = accepted | ambiguous_accepted

    stripe_by_identifier: dict[str, list[dict]] = collections.defaultdict(list)
    for event in stripe_events:
        stripe_by_identifier[event["identifier"]].append(event)
    void_findings = _compare_voids(rows, voids, stripe_by_identifier, void_ledger)
    voided = void_findings.voided

    def row_of(identifier: str) -> str:
        return identifier.removeprefix(NEGATIVE_PREFIX)

    content_counts = collections.Counter(_content(row) for row in rows.values())
    return _Findings(
        rows=rows,
        ambiguous_accepted=ambiguous_accepted,
        phantom_ids=sorted(unknown_ids - ambiguous_accepted.keys()),
        expected=expected,
        lost_without_row=sorted(i for i in accepted if i not in rows),
        # A voided row may never have reached Stripe (never_sent): nothing to find there.
        lost_without_meter_event=sorted(i for i in expected if i in rows and i not in voided and i not in stripe_by_identifier),
        not_reported=sorted(i for i in expected if i in rows and i not in voided and rows[i].status != "reported"),
        duplicate_rows=sum(count - 1 for count in content_counts.values() if count > 1),
        duplicate_meter_events=sum(len(events) - 1 for events in stripe_by_identifier.values() if len(events) > 1),
        meter_events_without_row=sorted(i for i in stripe_by_identifier if row_of(i) not in rows),
        cost_mismatches=[i for i, event in expected.items() if i in rows and rows[i].agent700_cost != event.agent700_cost],
        value_mismatches=[
            i for i, event in expected.items()
            if i in rows and (rows[i].stripe_value != event.stripe_value
                              or any(int(Decimal(e["value"])) != event.stripe_value for e in stripe_by_identifier.get(i, [])))
        ],
        voids=void_findings,
    )


def _compare_voids(
    rows: dict[str, sa.Row], voids: dict[str, sa.Row], stripe_by_identifier: dict[str, list[dict]], void_ledger: VoidLedger
) -> _VoidFindings:
    completed = {i for i, void in voids.items() if void.state == "completed"}
    status_voided = {i for i, row in rows.items() if row.status == "voided"}
    voided = completed & status_voided
    client_voided = set(void_ledger.confirmed)

    def net(row_id: str) -> int:
        """What Stripe counts of the row: its own event(s) not canceled, and its negative event."""
        events = stripe_by_identifier.get(row_id, []) + stripe_by_identifier.get(NEGATIVE_PREFIX + row_id, [])
        return sum(int(Decimal(e["value"])) for e in events if counted(e))

    def taken_back(row_id: str) -> bool:
        return any(not counted(e) for e in stripe_by_identifier.get(row_id, [])) or NEGATIVE_PREFIX + row_id in stripe_by_identifier

    return _VoidFindings(
        voids=voids,
        voided=voided,
        client_voided=client_voided,
        pending=sorted(i for i, void in voids.items() if void.state == "pending"),
        failed=sorted(f"{i}: {void.method}: {void.error}" for i, void in voids.items() if void.state == "failed"),
        row_and_void_disagree=sorted(completed ^ status_voided),
        asked_not_in_database=sorted(client_voided - voids.keys()),
        in_database_not_asked=sorted(voids.keys() - void_ledger.planned.keys()),
        reason_mismatches=sorted(
            i for i in client_voided & voids.keys() if voids[i].reason != void_ledger.confirmed[i]
        ),
        still_billed=sorted(i for i in voided if net(i) != 0),
        canceled_not_voided=sorted(i for i in rows if i not in voids and taken_back(i)),
        negative_value_mismatches=sorted(
            i for i in rows
            if any(int(Decimal(e["value"])) != -rows[i].stripe_value for e in stripe_by_identifier.get(NEGATIVE_PREFIX + i, []))
        ),
    )


def _organization_totals(
    organization: Organization, found: _Findings, stripe_events: list[dict], decimals: int, stripe_summary: int | None
) -> dict:
    """One organization's totals in the database, at Stripe and in the ledger, and whether they agree.

    Costs are of every event recorded (a void takes nothing from a row's cost); Stripe
    values are of what must be billed: the rows not voided, the events not voided."""
    voided, client_voided = found.voids.voided, found.voids.client_voided
    org_rows = [row for row in found.rows.values() if row.organization_id == organization.id]
    org_expected = {i: event for i, event in found.expected.items() if event.organization_id == organization.id}
    org_meter_events = [e for e in stripe_events if e["customer"] == organization.stripe_customer_id]
    totals = {
        "organization_id": organization.id,
        "stripe_customer_id": organization.stripe_customer_id,
        "events_expected": len(org_expected),
        "events_voided_by_the_client": len(org_expected.keys() & client_voided),
        "rows": len(org_rows),
        "rows_voided": sum(1 for row in org_rows if row.id in voided),
        "stripe_meter_events": len(org_meter_events),
        "stripe_meter_events_canceled": sum(1 for e in org_meter_events if not counted(e)),
        "stripe_negative_meter_events": sum(1 for e in org_meter_events if e["identifier"].startswith(NEGATIVE_PREFIX)),
        "agent700_cost_database": exact_sum(row.agent700_cost for row in org_rows),
        "agent700_cost_load_generator": exact_sum(event.agent700_cost for event in org_expected.values()),
        # What Stripe bills: its summaries, and the same from its meter events.
        "stripe_value_sum_stripe": stripe_summary,
        "stripe_value_sum_stripe_meter_events": sum(int(Decimal(e["value"])) for e in org_meter_events if counted(e)),
        "stripe_value_sum_database": sum(row.stripe_value for row in org_rows if row.status == "reported"),
        "stripe_value_sum_load_generator": sum(event.stripe_value for i, event in org_expected.items() if i not in client_voided),
        "stripe_value_voided_database": sum(row.stripe_value for row in org_rows if row.id in voided),
    }
    if totals["stripe_value_sum_stripe"] is None:
        totals["stripe_value_sum_stripe"] = totals["stripe_value_sum_stripe_meter_events"]
        totals["stripe_summaries_read"] = False
    totals["equal"] = (
        totals["agent700_cost_database"] == totals["agent700_cost_load_generator"]
        and totals["stripe_value_sum_stripe"] == totals["stripe_value_sum_stripe_meter_events"]
        == totals["stripe_value_sum_database"] == totals["stripe_value_sum_load_generator"]
    )
    # The same totals in dollars, to the unit of STRIPE_VALUE_DECIMALS, for reading.
    unit = Decimal(1).scaleb(-decimals)
    totals["agent700_cost_stripe_usd"] = Decimal(totals["stripe_value_sum_stripe"]).scaleb(-decimals, context=EXACT)
    totals["agent700_cost_database_rounded_usd"] = totals["agent700_cost_database"].quantize(unit, rounding=decimal.ROUND_HALF_EVEN)
    return totals


def _duplicates(found: _Findings, ledger: Ledger) -> int:
    return found.duplicate_rows + found.duplicate_meter_events + len(ledger.idempotency_mismatches)


def _problems(found: _Findings, ledger: Ledger, void_ledger: VoidLedger, organizations: list[dict]) -> list[str]:
    """One sentence per way the run failed; none if it passed."""
    failed_errors = collections.Counter(row.error for row in found.rows.values() if row.status == "failed")
    problems = []
    if found.lost:
        problems.append(
            f"lost: {len(found.lost_without_row)} accepted without a row (e.g. {found.lost_without_row[:EXAMPLES_SHOWN]}), "
            f"{len(found.lost_without_meter_event)} without a Stripe meter event (e.g. {found.lost_without_meter_event[:EXAMPLES_SHOWN]}), "
            f"{len(found.not_reported)} not reported (e.g. {found.not_reported[:EXAMPLES_SHOWN]}; failures: {dict(failed_errors)})"
        )
    if _duplicates(found, ledger):
        problems.append(
            f"duplicated: {found.duplicate_rows} rows of an event already recorded, {found.duplicate_meter_events} repeated meter events, "
            f"{len(ledger.idempotency_mismatches)} Idempotency-Key answers naming another id "
            f"(e.g. {ledger.idempotency_mismatches[:EXAMPLES_SHOWN]})"
        )
    if found.phantom_ids or found.meter_events_without_row:
        problems.append(
            f"unexpected: {len(found.phantom_ids)} rows no client was answered for (e.g. {found.phantom_ids[:EXAMPLES_SHOWN]}), "
            f"{len(found.meter_events_without_row)} meter events without a row"
        )
    if found.cost_mismatches or found.value_mismatches or not all(o["equal"] for o in organizations):
        problems.append(
            f"unequal: {len(found.cost_mismatches)} rows with another agent700_cost, {len(found.value_mismatches)} with another "
            f"Stripe value; organizations unequal: {[o['organization_id'] for o in organizations if not o['equal']]}"
        )
    problems += _void_problems(found.voids, void_ledger)
    if ledger.invalid_accepted:
        problems.append(f"invalid requests accepted: {ledger.invalid_accepted[:EXAMPLES_SHOWN]}")
    if ledger.crashes:
        problems.append(f"the load generator failed: {ledger.crashes[0]}")
    if not ledger.accepted:
        problems.append("no event was accepted: the run proves nothing")
    if ledger.unexpected_answers:
        problems.append(f"unexpected answers: {len(ledger.unexpected_answers)} (e.g. {ledger.unexpected_answers[:EXAMPLES_SHOWN]})")
    return problems


def _void_problems(voids: _VoidFindings, void_ledger: VoidLedger) -> list[str]:
    problems = []
    checks = (
        ("voids still pending after the drain", voids.pending),
        ("voids failed", voids.failed),
        ("rows whose status and void disagree (voided without a completed void, or the reverse)", voids.row_and_void_disagree),
        ("voids answered 2xx that the database lacks", voids.asked_not_in_database),
        ("voids in the database no client asked for", voids.in_database_not_asked),
        ("voids whose reason is not the one answered", voids.reason_mismatches),
        ("voided rows Stripe still counts something of", voids.still_billed),
        ("rows not voided whose meter event Stripe canceled or took back", voids.canceled_not_voided),
        ("negative events of another value than minus the row's", voids.negative_value_mismatches),
        ("void requests answered 404 for an accepted event", void_ledger.not_found_for_accepted),
        ("void requests without a final answer within the retry budget", void_ledger.given_up),
        ("void answers inconsistent with themselves or each other", void_ledger.inconsistent),
        ("unexpected void answers", void_ledger.unexpected_answers),
    )
    for what, examples in checks:
        if examples:
            problems.append(f"{what}: {len(examples)} (e.g. {examples[:EXAMPLES_SHOWN]})")
    if void_ledger.crashes:
        problems.append(f"the voider failed: {void_ledger.crashes[0]}")
    return problems


def _void_summary(found: _Findings, void_ledger: VoidLedger) -> dict:
    voids = found.voids
    by_method_and_state: dict[str, dict[str, int]] = {}
    for (method, state), count in sorted(collections.Counter((v.method, v.state) for v in voids.voids.values()).items()):
        by_method_and_state.setdefault(method, {})[state] = count
    completed = [v for v in voids.voids.values() if v.state == "completed"]
    return {
        **ledger_summary(void_ledger),
        "in_database": len(voids.voids),
        "by_method_and_state": by_method_and_state,
        "completed_by_method": dict(collections.Counter(v.method for v in completed)),
        "completed": len(completed),
        "pending": len(voids.pending),
        "failed": len(voids.failed),
        "rows_voided": len(voids.voided),
        "stripe_calls_per_void": dict(sorted(collections.Counter(v.stripe_attempts for v in voids.voids.values()).items())),
        "seconds_asked_to_completed": percentiles(
            [(v.completed_at - v.requested_at).total_seconds() for v in completed if v.completed_at is not None]
        ),
        "checks": {
            "row_and_void_disagree": len(voids.row_and_void_disagree),
            "asked_not_in_database": len(voids.asked_not_in_database),
            "in_database_not_asked": len(voids.in_database_not_asked),
            "reason_mismatches": len(voids.reason_mismatches),
            "still_billed_at_stripe": len(voids.still_billed),
            "canceled_not_voided": len(voids.canceled_not_voided),
            "negative_value_mismatches": len(voids.negative_value_mismatches),
        },
        "failures": voids.failed[:EXAMPLES_SHOWN],
        "pending_ids": voids.pending[:EXAMPLES_SHOWN],
    }


def _summary(found: _Findings, stripe_events: list[dict], ledger: Ledger, void_ledger: VoidLedger, organizations: list[dict]) -> dict:
    """The reconciliation's part of the report."""
    rows = found.rows
    latencies = [
        (row.stripe_reported_at - row.received_at).total_seconds()
        for row in rows.values() if row.stripe_reported_at is not None
    ]
    status_counts = collections.Counter(row.status for row in rows.values())
    return {
        "requests": {
            "attempts_by_kind_and_outcome": _by_kind(ledger.attempts),
            "attempts_by_outcome": dict(collections.Counter(outcome for (_, outcome) in ledger.attempts.elements())),
            "final_by_kind_and_outcome": _by_kind(ledger.requests),
            "request_latency_ms": percentiles(ledger.latencies_ms, digits=1),
        },
        "events": {
            "sent": ledger.events_sent,
            "accepted": len(ledger.accepted),
            # Sent without a key, connection lost before the answer: fate known only from the database.
            "ambiguous_without_key": len(ledger.ambiguous),
            "ambiguous_found_accepted": len(found.ambiguous_accepted),
            # Keyed events whose first answer was lost although the service had accepted them.
            "keyed_answers_lost_after_acceptance": ledger.answers_lost_after_acceptance,
            "unknown_outcome_answers": ledger.unknown_outcomes,
            "unknown_outcomes_resolved": dict(ledger.unknown_resolved),
            "rows_recorded": len(rows),
            "rows_by_status": dict(status_counts),
            "reported": status_counts.get("reported", 0),
            "voided": status_counts.get("voided", 0),
            "stripe_meter_events": len(stripe_events),
            "stripe_meter_events_canceled": sum(1 for e in stripe_events if not counted(e)),
            "stripe_negative_meter_events": sum(1 for e in stripe_events if e["identifier"].startswith(NEGATIVE_PREFIX)),
            # Meter events of rows, counted by Stripe: one per reported row.
            "stripe_meter_events_counted_of_rows": sum(
                1 for e in stripe_events if counted(e) and not e["identifier"].startswith(NEGATIVE_PREFIX)
            ),
        },
        "voids": _void_summary(found, void_ledger),
        "lost": {
            "total": found.lost,
            "accepted_without_row": len(found.lost_without_row),
            "without_stripe_meter_event": len(found.lost_without_meter_event),
            "not_reported": len(found.not_reported),
        },
        "duplicates": {
            "total": _duplicates(found, ledger),
            "rows_for_the_same_event": found.duplicate_rows,
            "stripe_meter_events_for_the_same_row": found.duplicate_meter_events,
            "idempotency_key_answered_another_id": len(ledger.idempotency_mismatches),
        },
        "unexpected": {
            "rows_no_client_was_answered_for": len(found.phantom_ids),
            "stripe_meter_events_without_row": len(found.meter_events_without_row),
            "invalid_requests_accepted": len(ledger.invalid_accepted),
            "unexpected_answers": len(ledger.unexpected_answers),
        },
        "unequal": {"agent700_cost_rows": len(found.cost_mismatches), "stripe_value_rows": len(found.value_mismatches)},
        "organizations": organizations,
        "latency_seconds_acceptance_to_report": percentiles(latencies),
        "problems": _problems(found, ledger, void_ledger, organizations),
    }


def lines_containing(path: Path, text: str) -> int:
    """How many lines of a log mention ``text`` (0 if there is no such log)."""
    try:
        with open(path, errors="replace") as log:
            return sum(1 for line in log if text in line)
    except FileNotFoundError:
        return 0


def _json_default(value):
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def write(report: dict, paths: list[Path]) -> None:
    text = json.dumps(report, indent=2, default=_json_default)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def render(report: dict) -> str:
    """The report for a human, as printed at the end of the run."""
    lines = ["", "=" * 30 + " soak reconciliation report " + "=" * 30]
    lines += _run_lines(report) + _event_lines(report) + _void_lines(report) + _total_lines(report) + _result_lines(report)
    return "\n".join(lines)


def _run_lines(report: dict) -> list[str]:
    """The command, the load, the faults injected and the requests sent."""
    lines = [f"command: {report['command']}"]
    lines.append(
        f"load: {report['load']['seconds']:.0f} s at {report['load']['rate']:.0f} events/s offered "
        f"({report['load']['concurrency']} senders); Redis appendfsync {report['settings']['appendfsync']}; "
        f"drain: {'done' if report['drain']['drained'] else 'NOT DONE'} in {report['drain']['seconds']} s"
    )
    lines.append("faults injected:")
    for fault in report["faults"]:
        lines.append(f"  t={fault['at_seconds']:6.1f}s  {fault['name']:<17} {fault['error'] or fault['detail']}")
    for crash in report.get("unexpected_exits", []):
        lines.append(f"  unexpected exit (a warning): {crash}")
    requests = report["requests"]
    lines.append("requests sent, by outcome (every attempt):")
    for kind, outcomes in requests["attempts_by_kind_and_outcome"].items():
        lines.append(f"  {kind:<14} " + ", ".join(f"{outcome}: {count}" for outcome, count in outcomes.items()))
    lines.append("  all            " + ", ".join(f"{o}: {c}" for o, c in sorted(requests["attempts_by_outcome"].items())))
    return lines


def _event_lines(report: dict) -> list[str]:
    """What became of the events, answers lost included."""
    events = report["events"]
    resolved = events["unknown_outcomes_resolved"]
    return [
        f"events: sent {events['sent']}, accepted {events['accepted']}, rows recorded {events['rows_recorded']} "
        f"{events['rows_by_status']}, reported {events['reported']}, voided {events['voided']}, Stripe meter events "
        f"{events['stripe_meter_events']} (canceled {events['stripe_meter_events_canceled']}, negative "
        f"{events['stripe_negative_meter_events']}, of rows counted {events['stripe_meter_events_counted_of_rows']})",
        f"answers lost in transit: {events['ambiguous_without_key']} events sent without a key (not retried), of which "
        f"{events['ambiguous_found_accepted']} were in fact accepted; {events['keyed_answers_lost_after_acceptance']} "
        "keyed events accepted whose answer was lost (the retry got the original id)",
        f"unknown outcomes (503 naming the ids, the queue's reply lost): {events['unknown_outcome_answers']} events; "
        f"resolved through the status endpoint: {resolved.get('accepted', 0)} accepted, "
        f"{resolved.get('not accepted', 0)} not accepted, {resolved.get('unresolved', 0)} unresolved",
        "reporter rounds refused by Stripe (after the SDK's retries) for a second concurrent call for a customer: "
        f"{report['stripe_one_call_per_customer_refusals']}",
    ]


def _void_lines(report: dict) -> list[str]:
    """The voids: asked, answered, and what became of them."""
    voids = report["voids"]
    asked = voids["asked_by_timing_and_kind"]
    lines = [
        f"voids: asked {voids['asked']} ("
        + "; ".join(f"{timing}: " + ", ".join(f"{k} {c}" for k, c in kinds.items()) for timing, kinds in asked.items())
        + f"), in the database {voids['in_database']}, completed {voids['completed']} {voids['completed_by_method']}, "
        f"pending {voids['pending']}, failed {voids['failed']}, rows voided {voids['rows_voided']}; "
        f"drain of the voids: {'done' if report.get('void_drain', {}).get('drained', True) else 'NOT DONE'} "
        f"in {report.get('void_drain', {}).get('seconds', 0)} s",
        "void requests, by outcome (every attempt): "
        + "; ".join(f"{timing}: " + ", ".join(f"{o} {c}" for o, c in outcomes.items())
                    for timing, outcomes in voids["attempts_by_timing_and_outcome"].items()),
        f"void answers: 409 queued then asked again after Retry-After {voids['queued_409_retried_after_retry_after']}, "
        f"404 for an accepted event {voids['not_found_for_accepted_event']}, given up {voids['given_up']}, "
        f"inconsistent {voids['inconsistent_answers']}, unexpected {voids['unexpected_answers']}; "
        f"Stripe calls per void {voids['stripe_calls_per_void']}; seconds asked -> completed "
        + ", ".join(f"{k} {v}" for k, v in voids["seconds_asked_to_completed"].items() if k != "count"),
        f"void checks: {voids['checks']}",
    ]
    return lines


def _total_lines(report: dict) -> list[str]:
    """Lost, duplicated, unequal, and each organization's totals."""
    lines = [
        f"lost: {report['lost']['total']}  {report['lost']}",
        f"duplicates: {report['duplicates']['total']}  {report['duplicates']}",
        f"unexpected: {report['unexpected']}   unequal: {report['unequal']}",
        "agent700_cost per organization, every row (database = load generator); Stripe values billed "
        "(Stripe's summaries = its meter events, canceled out, negative in = database's reported rows = load generator's events not voided):",
    ]
    for org in report["organizations"]:
        lines.append(
            f"  {org['stripe_customer_id']}  events {org['events_expected']:>6}  db {format(org['agent700_cost_database'], 'f')}"
            f" | generator {format(org['agent700_cost_load_generator'], 'f')}"
            f" | voided {org['rows_voided']} ({org['stripe_value_voided_database']})"
            f" | Stripe {org['stripe_value_sum_stripe']} / meter events {org['stripe_value_sum_stripe_meter_events']}"
            f" / db {org['stripe_value_sum_database']}"
            f" / generator {org['stripe_value_sum_load_generator']} (1e-{report['settings']['stripe_value_decimals']} USD)"
            f"  {'equal' if org['equal'] else 'UNEQUAL'}"
        )
    return lines


def _result_lines(report: dict) -> list[str]:
    """The latencies, the verdict and its problems, and where the report is."""
    latency = report["latency_seconds_acceptance_to_report"]
    http = report["requests"]["request_latency_ms"]
    lines = [
        "latency acceptance -> reported to Stripe (s): "
        + ", ".join(f"{k} {v}" for k, v in latency.items() if k != "count") + f"  (n={latency['count']})",
        "HTTP answer time (ms): " + ", ".join(f"{k} {v}" for k, v in http.items() if k != "count"),
        "RESULT: " + ("PASSED: 0 lost, 0 duplicated, totals equal, every void complete" if report["passed"] else "FAILED"),
    ]
    lines += [f"  - {problem}" for problem in report["problems"]]
    lines.append(f"report: {report['report_paths'][0]}")
    return lines
