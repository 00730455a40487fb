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
from soak.load import EXACT, Ledger, PlannedEvent
from soak.seeding import Organization, World

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
    pending = 0
    with contextlib.suppress(redis.ResponseError):  # no consumer group yet
        pending = broker.xpending(intake.STREAM, intake.GROUP)["pending"]
    return {
        "rows_by_status": by_status,
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

    @property
    def lost(self) -> int:
        return len(self.lost_without_row) + len(set(self.lost_without_meter_event) | set(self.not_reported))


def reconcile(database_url: str, stripe_events: list[dict], ledger: Ledger, world: World, decimals: int) -> dict:
    found = _compare(_rows(database_url), stripe_events, ledger)
    organizations = [
        _organization_totals(organization, found, stripe_events, decimals) for organization in world.organizations
    ]
    return _summary(found, stripe_events, ledger, organizations)


def _compare(rows: dict[str, sa.Row], stripe_events: list[dict], ledger: Ledger) -> _Findings:
    accepted = dict(ledger.accepted)
    # Rows the ledger does not know: an event sent without a key whose answer was lost
    # (matched by content: accepted after all), or a row nobody was told about.
    unknown_ids = rows.keys() - accepted.keys()
    ambiguous_accepted = {i: ledger.ambiguous[_content(rows[i])] for i in unknown_ids if _content(rows[i]) in ledger.ambiguous}
    expected: dict[str, PlannedEvent] = accepted | ambiguous_accepted

    stripe_by_identifier: dict[str, list[dict]] = collections.defaultdict(list)
    for event in stripe_events:
        stripe_by_identifier[event["identifier"]].append(event)

    content_counts = collections.Counter(_content(row) for row in rows.values())
    return _Findings(
        rows=rows,
        ambiguous_accepted=ambiguous_accepted,
        phantom_ids=sorted(unknown_ids - ambiguous_accepted.keys()),
        expected=expected,
        lost_without_row=sorted(i for i in accepted if i not in rows),
        lost_without_meter_event=sorted(i for i in expected if i in rows and i not in stripe_by_identifier),
        not_reported=sorted(i for i in expected if i in rows and rows[i].status != "reported"),
        duplicate_rows=sum(count - 1 for count in content_counts.values() if count > 1),
        duplicate_meter_events=sum(len(events) - 1 for events in stripe_by_identifier.values() if len(events) > 1),
        meter_events_without_row=sorted(i for i in stripe_by_identifier if i not in rows),
        cost_mismatches=[i for i, event in expected.items() if i in rows and rows[i].agent700_cost != event.agent700_cost],
        value_mismatches=[
            i for i, event in expected.items()
            if i in rows and (rows[i].stripe_value != event.stripe_value
                              or any(int(Decimal(e["value"])) != event.stripe_value for e in stripe_by_identifier.get(i, [])))
        ],
    )


def _organization_totals(organization: Organization, found: _Findings, stripe_events: list[dict], decimals: int) -> dict:
    """One organization's totals in the database, at Stripe and in the ledger, and whether they agree."""
    org_rows = [row for row in found.rows.values() if row.organization_id == organization.id]
    org_expected = [event for event in found.expected.values() if event.organization_id == organization.id]
    org_meter_events = [e for e in stripe_events if e["customer"] == organization.stripe_customer_id]
    totals = {
        "organization_id": organization.id,
        "stripe_customer_id": organization.stripe_customer_id,
        "events_expected": len(org_expected),
        "rows": len(org_rows),
        "stripe_meter_events": len(org_meter_events),
        "agent700_cost_database": exact_sum(row.agent700_cost for row in org_rows),
        "agent700_cost_load_generator": exact_sum(event.agent700_cost for event in org_expected),
        "stripe_value_sum_stripe": sum(int(Decimal(e["value"])) for e in org_meter_events),
        "stripe_value_sum_database": sum(row.stripe_value for row in org_rows),
        "stripe_value_sum_load_generator": sum(event.stripe_value for event in org_expected),
    }
    totals["equal"] = (
        totals["agent700_cost_database"] == totals["agent700_cost_load_generator"]
        and totals["stripe_value_sum_stripe"] == totals["stripe_value_sum_database"] == totals["stripe_value_sum_load_generator"]
    )
    # The same totals in dollars, to the unit of STRIPE_VALUE_DECIMALS, for reading.
    unit = Decimal(1).scaleb(-decimals)
    totals["agent700_cost_stripe_usd"] = Decimal(totals["stripe_value_sum_stripe"]).scaleb(-decimals, context=EXACT)
    totals["agent700_cost_database_rounded_usd"] = totals["agent700_cost_database"].quantize(unit, rounding=decimal.ROUND_HALF_EVEN)
    return totals


def _duplicates(found: _Findings, ledger: Ledger) -> int:
    return found.duplicate_rows + found.duplicate_meter_events + len(ledger.idempotency_mismatches)


def _problems(found: _Findings, ledger: Ledger, organizations: list[dict]) -> list[str]:
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
    if ledger.invalid_accepted:
        problems.append(f"invalid requests accepted: {ledger.invalid_accepted[:EXAMPLES_SHOWN]}")
    if ledger.crashes:
        problems.append(f"the load generator failed: {ledger.crashes[0]}")
    if not ledger.accepted:
        problems.append("no event was accepted: the run proves nothing")
    if ledger.unexpected_answers:
        problems.append(f"unexpected answers: {len(ledger.unexpected_answers)} (e.g. {ledger.unexpected_answers[:EXAMPLES_SHOWN]})")
    return problems


def _summary(found: _Findings, stripe_events: list[dict], ledger: Ledger, organizations: list[dict]) -> dict:
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
            "stripe_meter_events": len(stripe_events),
        },
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
        "problems": _problems(found, ledger, organizations),
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
    lines += _run_lines(report) + _event_lines(report) + _total_lines(report) + _result_lines(report)
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
        f"{events['rows_by_status']}, reported {events['reported']}, Stripe meter events {events['stripe_meter_events']}",
        f"answers lost in transit: {events['ambiguous_without_key']} events sent without a key (not retried), of which "
        f"{events['ambiguous_found_accepted']} were in fact accepted; {events['keyed_answers_lost_after_acceptance']} "
        "keyed events accepted whose answer was lost (the retry got the original id)",
        f"unknown outcomes (503 naming the ids, the queue's reply lost): {events['unknown_outcome_answers']} events; "
        f"resolved through the status endpoint: {resolved.get('accepted', 0)} accepted, "
        f"{resolved.get('not accepted', 0)} not accepted, {resolved.get('unresolved', 0)} unresolved",
        "reporter rounds refused by Stripe (after the SDK's retries) for a second concurrent call for a customer: "
        f"{report['stripe_one_call_per_customer_refusals']}",
    ]


def _total_lines(report: dict) -> list[str]:
    """Lost, duplicated, unequal, and each organization's totals."""
    lines = [
        f"lost: {report['lost']['total']}  {report['lost']}",
        f"duplicates: {report['duplicates']['total']}  {report['duplicates']}",
        f"unexpected: {report['unexpected']}   unequal: {report['unequal']}",
        "agent700_cost per organization (database = load generator; Stripe values = database = load generator):",
    ]
    for org in report["organizations"]:
        lines.append(
            f"  {org['stripe_customer_id']}  events {org['events_expected']:>6}  db {format(org['agent700_cost_database'], 'f')}"
            f" | generator {format(org['agent700_cost_load_generator'], 'f')}"
            f" | Stripe {org['stripe_value_sum_stripe']} / db {org['stripe_value_sum_database']}"
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
        "RESULT: " + ("PASSED: 0 lost, 0 duplicated, totals equal" if report["passed"] else "FAILED"),
    ]
    lines += [f"  - {problem}" for problem in report["problems"]]
    lines.append(f"report: {report['report_paths'][0]}")
    return lines
