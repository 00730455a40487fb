"""The log table at scale (issue 23): ``user_billable_request_logs`` filled to each size,
and at each size what recording, lookups, usage totals and the operator commands take.

    .venv/bin/python -m bench.table_scale --sizes 0,10000000,50000000

A fresh migrated database (``harness.database``), dropped at the end. The rows are made
by PostgreSQL itself (``INSERT ... SELECT generate_series`` in chunks, with every
production index, constraint and trigger in place but the foreign-key checks): 500
organizations of Zipf-skewed size, one of them (``heavy``) about 13 % of all rows; 20
models; 40 days of history ending now, oldest first within each fill; mostly
``reported``, the last 10 minutes ``recorded``, 0.1 % ``voided`` (each with its completed
void), and 10,000 ``failed`` in all (for ``usage failed``). A user mostly calls one model
(its favourite, 90 %), so an organization-hour holds a few hundred distinct
(user, model, service, source) keys, not one per row.

Measured at each size, in the same run (the machine is shared: compare figures of one run):

- ``recording``: ``worker.recording.write_rows`` driven directly, batches of the worker's
  ``BATCH_SIZE`` in a transaction each, one process: events/s over ``--record-seconds``
  (the events are built before the clock starts; the intake's Redis side is not in it);
- ``status_lookup``: ``ingest_api.event_status._from_database`` for sampled ids (the
  database side of GET .../{id}; the intake look comes first and does not grow);
- ``recording_without_roll_up``: the same with the roll-up triggers disabled (what
  recording paid before migration 0008), in rounds alternating with ``recording``'s;
- ``org_month``: ``shared.usage_totals.totals`` for the heavy organization's last 31
  whole days, ungrouped and by model and day; ``org_month_rows`` its rows;
  ``org_month_from_rows``: the same summed from the log rows alone (before 0008);
- ``sweep``: each query of the beat sweep and of a reporter's stand-down and read;
- ``reconcile_db``: ``stripe reconcile``'s database side for the heavy organization's
  busiest day (day totals, the not-compared counts, the rows after the window, the
  drill-down's hour totals); the Stripe side asks the Stripe API and does not grow;
- ``usage_failed``: ``flask usage failed --json`` as an operator runs it (a process of
  its own, start-up included) with 10,000 failed rows;
- ``migration``: ``ALTER TABLE ... ADD COLUMN`` of a nullable column, timed, then dropped.

Latencies are in milliseconds; p99 is the nearest-rank 99th percentile of ``--runs``
runs (with fewer than 100 runs, the slowest). JSON results are printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa

from bench import harness
from ingest_api import event_status
from operator_cli import stripe_reconcile
from shared import db, models, usage_rows, usage_totals
from shared.usage_event import AcceptedUsageEvent
from worker import recording, reporting, sweep_queries, tasks

ORGANIZATIONS = 500
MODELS = 20
HISTORY = dt.timedelta(days=40)
HEAVY_SHARE = 0.13  # of all rows: about 5 M in its last 31 days at 50 M rows
FAILED_ROWS = 10_000
VOIDED_SHARE = 0.001
RECENT_RECORDED = dt.timedelta(minutes=10)  # rows this young are not reported yet
SLOTS = 100_000  # (organization, user, model, service, source) draws, by frequency
CHUNK = 1_000_000  # rows per INSERT statement of the fill
VALUE_DECIMALS = 6
_logs = models.UserBillableRequestLog


@dataclass(frozen=True)
class Catalog:
    heavy: uuid.UUID  # the biggest organization
    slots: list[tuple]  # (organization_id, user_id, model_name, service_name, source)


def seed(engine: sa.Engine, rng: random.Random) -> Catalog:
    """Organizations, users, two services, 20 priced models, and the slots table the fill
    draws its rows from (``bench_slots``, in the bench's database only)."""
    organizations = [uuid.uuid4() for _ in range(ORGANIZATIONS)]
    # Zipf over the others; the heavy one takes HEAVY_SHARE of the rows on its own.
    weights = [HEAVY_SHARE] + [(1 - HEAVY_SHARE) * w for w in _zipf(ORGANIZATIONS - 1, 1.1)]
    # Users by the organization's size: 1 to 50.
    users_of = {
        org: [uuid.uuid4() for _ in range(max(1, min(50, round(weight * 2000))))]
        for org, weight in zip(organizations, weights, strict=True)
    }
    favourite = {}
    model_names = [f"bench-model-{i:02d}" for i in range(MODELS)]
    model_weights = _zipf(MODELS, 1.0)
    services = {"transcription": uuid.uuid4(), "dictation": uuid.uuid4()}
    prices = {name: uuid.uuid4() for name in model_names}
    with engine.begin() as conn:
        conn.execute(sa.insert(models.Organization), [
            {"id": org, "name": f"bench-{i}", "stripe_customer_id": f"cus_bench{i}"} for i, org in enumerate(organizations)
        ])
        conn.execute(sa.insert(models.User), [
            {"id": user, "email": f"{user}@bench.example"} for users in users_of.values() for user in users
        ])
        conn.execute(sa.insert(models.Service), [{"id": i, "name": name} for name, i in services.items()])
        conn.execute(sa.insert(models.TextModelCost), [
            {"id": prices[name], "model_name": name, "input_cost_per_token": Decimal("0.00000015") * (1 + i % 5),
             "output_cost_per_token": Decimal("0.0000006") * (1 + i % 5),
             "agent700_input_cost_per_token": Decimal("0.0000003") * (1 + i % 5),
             "agent700_output_cost_per_token": Decimal("0.0000012") * (1 + i % 5),
             "effective_from": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}
            for i, name in enumerate(model_names)
        ])
        slots = []
        for slot in range(SLOTS):
            org = rng.choices(organizations, weights)[0]
            user = rng.choice(users_of[org])
            favourite.setdefault(user, rng.choices(model_names, model_weights)[0])
            model = favourite[user] if rng.random() < 0.9 else rng.choices(model_names, model_weights)[0]
            service = "transcription" if rng.random() < 0.8 else "dictation"
            source = "external_api" if rng.random() < 0.9 else "batch_job"
            slots.append((slot, org, user, model, service, source))
        # The slots with what the fill needs of their price, in one multi-row INSERT per batch.
        conn.exec_driver_sql(
            "CREATE TABLE bench_slots (slot int PRIMARY KEY, organization_id uuid, user_id uuid, model_name text,"
            " service_id uuid, text_model_cost_id uuid, source text, in_rate numeric, out_rate numeric,"
            " a7_in_rate numeric, a7_out_rate numeric)"
        )
        rates = {row.model_name: row for row in conn.execute(sa.select(models.TextModelCost))}
        table = sa.table("bench_slots", *(sa.column(name) for name in (
            "slot", "organization_id", "user_id", "model_name", "service_id", "text_model_cost_id", "source",
            "in_rate", "out_rate", "a7_in_rate", "a7_out_rate",
        )))
        conn.execute(table.insert(), [
            dict(slot=slot, organization_id=o, user_id=u, model_name=m, service_id=services[sv],
                 text_model_cost_id=rates[m].id, source=src, in_rate=rates[m].input_cost_per_token,
                 out_rate=rates[m].output_cost_per_token, a7_in_rate=rates[m].agent700_input_cost_per_token,
                 a7_out_rate=rates[m].agent700_output_cost_per_token)
            for slot, o, u, m, sv, src in slots
        ])
    return Catalog(organizations[0], [(o, u, m, sv, src) for _s, o, u, m, sv, src in slots])


def _zipf(count: int, exponent: float) -> list[float]:
    raw = [1 / (rank ** exponent) for rank in range(1, count + 1)]
    return [w / sum(raw) for w in raw]


_FILL = """
INSERT INTO user_billable_request_logs (
    id, user_id, organization_id, service_id, text_model_cost_id, model_name, input_tokens, output_tokens,
    service_cost, agent700_cost, source, occurred_at, received_at, recorded_at, caller_user_id, idempotency_key,
    status, stripe_identifier, stripe_value, stripe_attempts, stripe_reported_at, stripe_first_sent_at, error)
SELECT g.id, s.user_id, s.organization_id, s.service_id, s.text_model_cost_id, s.model_name, g.input_tokens,
       g.output_tokens, g.input_tokens * s.in_rate + g.output_tokens * s.out_rate,
       g.input_tokens * s.a7_in_rate + g.output_tokens * s.a7_out_rate, s.source, g.occurred_at,
       g.occurred_at + interval '20 ms', g.occurred_at + interval '300 ms', s.user_id,
       CASE WHEN g.n % 2 = 0 THEN md5(g.id::text) END, g.status, g.id::text,
       round((g.input_tokens * s.a7_in_rate + g.output_tokens * s.a7_out_rate) * 10::numeric ^ :decimals)::bigint,
       CASE WHEN g.status = 'recorded' THEN 0 ELSE 1 END,
       CASE WHEN g.status IN ('reported', 'voided') THEN g.occurred_at + interval '1 s' END,
       CASE WHEN g.status <> 'recorded' THEN g.occurred_at + interval '500 ms' END,
       CASE WHEN g.status = 'failed' THEN 'bench: Stripe refused the event' END
FROM (
    SELECT n, id, input_tokens, output_tokens, occurred_at, slot,
           CASE WHEN n % :failed_every = 0 AND n / :failed_every <= :failed THEN 'failed'
                WHEN occurred_at > now() - :recent THEN 'recorded'
                WHEN random() < :voided THEN 'voided'
                ELSE 'reported' END AS status
    FROM (
        SELECT n, gen_random_uuid() AS id, 50 + (random() * 4000)::int AS input_tokens,
               10 + (random() * 1000)::int AS output_tokens, floor(random() * :slots)::int AS slot,
               :start + (n * :step) * interval '1 microsecond' AS occurred_at
        FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS n
    ) AS raw
) AS g JOIN bench_slots s USING (slot)
"""


def fill(engine: sa.Engine, rows: int, *, bulk: bool = False) -> float:
    """Add ``rows`` rows over the whole history, oldest first; the seconds it took.
    ``bulk``: with the secondary indexes and the roll-up triggers off meanwhile, then the
    indexes built again and every row rolled up anew (``_bulk_load``)."""
    if rows <= 0:
        return 0.0
    started = time.monotonic()
    with _bulk_load(engine) if bulk else contextlib.nullcontext():
        _fill_rows(engine, rows, started)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO usage_voids (row_id, reason, requested_at, requested_by, method, state, completed_at)"
            " SELECT id, 'bench', occurred_at + interval '1 min', 'operator:bench', 'stripe_cancel', 'completed',"
            " occurred_at + interval '2 min' FROM user_billable_request_logs l WHERE status = 'voided'"
            " AND NOT EXISTS (SELECT FROM usage_voids v WHERE v.row_id = l.id)"
        ))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum would have by then
    return time.monotonic() - started


@contextlib.contextmanager
def _bulk_load(engine: sa.Engine):
    """PostgreSQL's bulk path: rows go in with only the primary key (the voids refer to
    it) and no roll-up triggers; then each other index is built by one sort, and the
    roll-ups are made again from every row by migration 0008's own statement. Several
    times faster than inserting with them; the indexes come out compact (as after a
    REINDEX), not as grown by random inserts."""
    roll_up = importlib.import_module("migrations.versions.0008_usage_hourly")
    with engine.connect() as conn:
        indexes = conn.execute(sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid), c.conname, pg_get_constraintdef(c.oid)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid LEFT JOIN pg_constraint c ON c.conindid = i.oid"
            " WHERE x.indrelid = 'user_billable_request_logs'::regclass AND NOT x.indisprimary"
        )).all()
    with engine.begin() as conn:
        for index, _definition, constraint, _constraint_definition in indexes:
            conn.exec_driver_sql(
                f'ALTER TABLE user_billable_request_logs DROP CONSTRAINT "{constraint}"' if constraint
                else f'DROP INDEX "{index}"'
            )
        for trigger in _ROLL_UP_TRIGGERS:
            conn.exec_driver_sql(f"ALTER TABLE user_billable_request_logs DISABLE TRIGGER {trigger}")
    yield
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("SET maintenance_work_mem = '1GB'")
        for index, definition, constraint, constraint_definition in indexes:
            conn.exec_driver_sql(
                f'ALTER TABLE user_billable_request_logs ADD CONSTRAINT "{constraint}" {constraint_definition}'
                if constraint else definition
            )
            print(f"built {index}", file=sys.stderr, flush=True)
        conn.exec_driver_sql("TRUNCATE usage_hourly")
        conn.exec_driver_sql(roll_up._upsert(roll_up._rolled_up("user_billable_request_logs")))
        for trigger in _ROLL_UP_TRIGGERS:
            conn.exec_driver_sql(f"ALTER TABLE user_billable_request_logs ENABLE TRIGGER {trigger}")


def _fill_rows(engine: sa.Engine, rows: int, started: float) -> None:
    with engine.connect() as conn:
        now = conn.scalar(sa.text("SELECT now()"))
        failed = conn.scalar(sa.select(sa.func.count()).select_from(_logs).where(_logs.status == "failed"))
    failed_wanted = max(0, FAILED_ROWS - failed)
    step = HISTORY / dt.timedelta(microseconds=1) / rows  # microseconds between rows
    for first in range(1, rows + 1, CHUNK):
        last = min(rows, first + CHUNK - 1)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")  # a bulk load's choice, not the service's
            # Without the foreign keys' per-row checks (the rows refer to seeded rows by
            # construction): they halved the fill's rate. Indexes, constraints and the
            # roll-up triggers stay, as recording pays them.
            checks = _foreign_key_checks(conn)
            for trigger in checks:
                conn.exec_driver_sql(f'ALTER TABLE user_billable_request_logs DISABLE TRIGGER "{trigger}"')
            conn.execute(sa.text(_FILL), dict(
                decimals=VALUE_DECIMALS, recent=RECENT_RECORDED, failed_every=max(1, rows // max(1, failed_wanted)),
                failed=failed_wanted, voided=VOIDED_SHARE, slots=SLOTS, start=now - HISTORY, step=step,
                first=first, last=last,
            ))
            for trigger in checks:
                conn.exec_driver_sql(f'ALTER TABLE user_billable_request_logs ENABLE TRIGGER "{trigger}"')
        print(f"filled {last:,} of {rows:,} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def _foreign_key_checks(conn) -> list[str]:
    """The internal triggers that check the log table's own foreign keys on insert."""
    return list(conn.scalars(sa.text(
        "SELECT tgname FROM pg_trigger t JOIN pg_constraint c ON c.oid = t.tgconstraint"
        " WHERE t.tgrelid = 'user_billable_request_logs'::regclass AND c.conrelid = t.tgrelid AND c.contype = 'f'"
    )))


_ROLL_UP_TRIGGERS = ("usage_hourly_insert", "usage_hourly_update")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    rank = max(0, -(-len(ordered) * 99 // 100) - 1)  # nearest rank
    return {"p50_ms": round(ordered[len(ordered) // 2], 2), "p99_ms": round(ordered[rank], 2), "runs": len(ordered)}


def timed(function: Callable[[], object], runs: int, budget_s: float = 60.0) -> dict[str, float]:
    """``function`` run ``runs`` times (at least 3; fewer than ``runs`` once ``budget_s`` is spent)."""
    samples, started = [], time.monotonic()
    for run in range(runs):
        if run >= 3 and time.monotonic() - started > budget_s:
            break
        begin = time.perf_counter()
        function()
        samples.append((time.perf_counter() - begin) * 1000)
    return percentiles(samples)


def compare_recording(url: str, catalog: Catalog, seconds: float, rng: random.Random, rounds: int = 3) -> dict:
    """Recording with the roll-up triggers and without, in alternating rounds after a
    warm-up, so that the machine's drift falls on both alike; events/s over all rounds."""
    measure_recording(url, catalog, 0.5, rng)  # warm-up: caches, plans, the pool
    totals = {True: [0, 0.0], False: [0, 0.0]}
    for _ in range(rounds):
        for roll_up in (True, False):
            round_ = measure_recording(url, catalog, seconds / rounds, rng, roll_up=roll_up)
            totals[roll_up][0] += round_["events"]
            totals[roll_up][1] += round_["events"] / round_["events_per_second"]
    return {
        ("recording" if roll_up else "recording_without_roll_up"): {"events_per_second": round(events / busy), "events": events}
        for roll_up, (events, busy) in totals.items()
    }


def measure_recording(url: str, catalog: Catalog, seconds: float, rng: random.Random, *, roll_up: bool = True) -> dict:
    """events/s of ``write_rows`` in the worker's batches; the rows are then marked
    reported (as the reporter would), so the next size starts as the fill left it.
    Without ``roll_up``: with migration 0008's triggers disabled meanwhile (what recording
    paid before them); those rows, never rolled up, are deleted afterwards."""
    if not roll_up:
        with db.transaction(url) as session:
            for trigger in _ROLL_UP_TRIGGERS:
                session.execute(sa.text(f"ALTER TABLE user_billable_request_logs DISABLE TRIGGER {trigger}"))
    try:
        return _record(url, catalog, seconds, rng, keep=roll_up)
    finally:
        if not roll_up:
            with db.transaction(url) as session:
                for trigger in _ROLL_UP_TRIGGERS:
                    session.execute(sa.text(f"ALTER TABLE user_billable_request_logs ENABLE TRIGGER {trigger}"))


def _record(url: str, catalog: Catalog, seconds: float, rng: random.Random, *, keep: bool) -> dict:
    started_at = _now(url)
    events_written, busy = 0, 0.0
    while busy < seconds:
        now = dt.datetime.now(dt.UTC)
        events = []
        for _ in range(recording.BATCH_SIZE):
            org, user, model, service, source = rng.choice(catalog.slots)
            events.append(AcceptedUsageEvent(
                id=uuid.uuid4(), user_id=user, organization_id=org, service_name=service, model_name=model,
                input_tokens=rng.randint(50, 4000), output_tokens=rng.randint(10, 1000), source=source,
                occurred_at=now, received_at=now, caller_user_id=user, idempotency_key=uuid.uuid4().hex,
            ))
        begin = time.perf_counter()
        with db.transaction(url) as session:
            result = recording.write_rows(session, events, value_decimals=VALUE_DECIMALS)
        busy += time.perf_counter() - begin
        assert len(result.recorded) == len(events), result.rejected
        events_written += len(events)
    written = sa.and_(_logs.status == "recorded", _logs.recorded_at >= started_at)
    with db.transaction(url) as session:
        if keep:
            session.execute(
                sa.update(_logs).where(written)
                .values(status="reported", stripe_reported_at=sa.func.now(), stripe_first_sent_at=sa.func.now())
            )
        else:
            session.execute(sa.delete(_logs).where(written))
    return {"events_per_second": events_written / busy, "events": events_written}


def measure_status(url: str, runs: int) -> dict:
    with db.transaction(url) as session:
        ids = list(session.scalars(sa.text(
            "SELECT id FROM user_billable_request_logs TABLESAMPLE SYSTEM (1) LIMIT :runs"
        ), {"runs": runs})) or [uuid.uuid4()]
    queue = iter(ids * (runs // len(ids) + 1))
    return timed(lambda: event_status._from_database(url, next(queue)), runs)


def org_month(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The last 31 whole UTC days before today."""
    until = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return until - usage_totals.MAX_SPAN, until


def measure_totals(url: str, catalog: Catalog, runs: int, totals=usage_totals.totals) -> dict:
    since, until = org_month(_now(url))
    results = {}
    for name, group_by in (("ungrouped", ()), ("by_model_day", ("model_name", "day"))):
        with db.transaction(url) as session:
            answer = totals(session, catalog.heavy, since, until, group_by)
        results[name] = timed(lambda g=group_by: _totals_once(url, catalog.heavy, since, until, g, totals), runs)
        results[name]["groups"] = len(answer.groups)
    results["org_month_rows"] = answer.total.total.events
    return results


def _totals_once(url, organization, since, until, group_by, totals):
    with db.transaction(url) as session:
        totals(session, organization, since, until, group_by)


def measure_sweep(url: str, runs: int) -> dict:
    def in_rolled_back(function):
        def run():
            with db.session_factory(url)() as session:
                try:
                    function(session)
                finally:
                    session.rollback()
        return run

    queries = {
        "flag_for_reconciliation": lambda s: usage_rows.flag_for_reconciliation(s),
        "shards_waiting": lambda s: sweep_queries.shards_waiting(s, tasks.STALE_AFTER),
        "shards_with_voids_due": sweep_queries.shards_with_voids_due,
        "stripe_events_unhandled": lambda s: sweep_queries.stripe_events_unhandled(s, tasks.STRIPE_EVENT_STALE_AFTER),
        "stand_down_work_waiting": lambda s: [reporting.work_waiting(s, shard) for shard in range(reporting.REPORT_SHARDS)],
        "reporter_read": lambda s: reporting._unreported(s, 0),
    }
    results = {name: timed(in_rolled_back(query), runs) for name, query in queries.items()}
    results["stand_down_work_waiting"]["note"] = f"all {reporting.REPORT_SHARDS} shards per run"
    return results


def measure_reconcile(url: str, catalog: Catalog, runs: int) -> dict:
    since, until = org_month(_now(url))
    with db.transaction(url) as session:
        day = session.scalar(sa.text(
            "SELECT date_trunc('day', occurred_at, 'UTC') AS d FROM user_billable_request_logs"
            " WHERE organization_id = :org AND occurred_at >= :since AND occurred_at < :until"
            " GROUP BY d ORDER BY count(*) DESC LIMIT 1"
        ), {"org": catalog.heavy, "since": since, "until": until}) or since
        day_rows = session.scalar(
            sa.select(sa.func.count()).select_from(_logs)
            .where(_logs.organization_id == catalog.heavy, _logs.occurred_at >= day, _logs.occurred_at < day + dt.timedelta(days=1))
        )
    end = day + dt.timedelta(days=1)

    def database_side():
        with db.transaction(url) as session:
            stripe_reconcile._database_totals(session, catalog.heavy, day, end, "day")
            stripe_reconcile._pending_counts(session, catalog.heavy, day, end)
            stripe_reconcile._rows_from(session, catalog.heavy, end)
            stripe_reconcile._database_totals(session, catalog.heavy, day, end, "hour")

    return timed(database_side, runs) | {"day_rows": day_rows}


def measure_usage_failed(url: str, runs: int) -> dict:
    """The command as an operator runs it (``process``: a Python of its own, start-up
    included), and the same command in this process (``in_process``: its own work)."""
    env = {
        "DATABASE_URL": url, "CELERY_BROKER_URL": harness.redis_server_url() or "redis://127.0.0.1:6379/0",
        "JWT_SECRET": harness.JWT_SECRET, "STRIPE_API_KEY": "sk_test_bench", "PYTHONPATH": str(harness.ROOT),
    }
    listed = []

    def command():
        output = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "ingest_api", "usage", "failed", "--json"],
            env=os.environ | env, cwd=harness.ROOT, check=True, capture_output=True, text=True,
        ).stdout
        listed.append(len(json.loads(output)["failed"]))

    from flask.cli import FlaskGroup
    from flask.testing import FlaskCliRunner

    from ingest_api import create_app
    from shared import config

    # Read from the command's environment, neither from nor into this process's (whose
    # settings are read once, and are a test run's under pytest).
    app = create_app(config.load_settings(os.environ | env))
    runner = FlaskCliRunner(app)

    def in_process():
        result = runner.invoke(FlaskGroup(create_app=lambda: app), ["usage", "failed", "--json"])
        assert result.exit_code == 0, result.output

    return {
        "process": timed(command, runs, budget_s=30), "in_process": timed(in_process, runs, budget_s=30),
        "failed_rows": listed[-1],
    }


def measure_migration(url: str) -> dict:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            begin = time.perf_counter()
            conn.exec_driver_sql("ALTER TABLE user_billable_request_logs ADD COLUMN bench_probe text")
            added = (time.perf_counter() - begin) * 1000
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE user_billable_request_logs DROP COLUMN bench_probe")
    finally:
        engine.dispose()
    return {"add_nullable_column_ms": round(added, 2)}


def _now(url: str) -> dt.datetime:
    with db.transaction(url) as session:
        return session.scalar(sa.select(sa.func.now()))


def table_size(engine: sa.Engine) -> dict:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*) AS rows, pg_total_relation_size('user_billable_request_logs') AS total,"
            " pg_indexes_size('user_billable_request_logs') AS indexes FROM user_billable_request_logs"
        )).one()
    return {"rows": row.rows, "table_and_indexes_gb": round(row.total / 1e9, 2), "indexes_gb": round(row.indexes / 1e9, 2)}


def run(
    sizes: list[int], *, runs: int, record_seconds: float, bulk: bool = False, seed_value: int = 23,
) -> list[dict]:
    rng = random.Random(seed_value)
    results = []
    with harness.database() as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            catalog = seed(engine, rng)
            current = 0
            for size in sizes:
                fill_s = fill(engine, size - current, bulk=bulk)
                current = size
                result = {"size": size, "fill_s": round(fill_s, 1), **table_size(engine)}
                result |= compare_recording(url, catalog, record_seconds, rng)
                result["status_lookup"] = measure_status(url, runs)
                result["org_month"] = measure_totals(url, catalog, runs)
                result["org_month_from_rows"] = measure_totals(url, catalog, runs, usage_totals.totals_from_rows)
                result["sweep"] = measure_sweep(url, runs)
                result["reconcile_db"] = measure_reconcile(url, catalog, runs)
                result["usage_failed"] = measure_usage_failed(url, min(runs, 10))
                result["migration"] = measure_migration(url)
                current = table_size(engine)["rows"]
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            engine.dispose()
            db.dispose_engines()
    return results


def table(results: list[dict]) -> str:
    """The results as BENCHMARKS.md's table: one row per measure, one column per size."""
    def p99(*path):
        return lambda r: _dig(r, *path, "p99_ms")

    measures = [
        ("rows (table + indexes, GB)", lambda r: f"{r['rows']:,} ({r['table_and_indexes_gb']})"),
        ("fill, s", lambda r: r["fill_s"]),
        ("recording, events/s (with roll-ups)", lambda r: f"{r['recording']['events_per_second']:,}"),
        ("recording, events/s (without roll-ups)", lambda r: f"{r['recording_without_roll_up']['events_per_second']:,}"),
        ("status lookup p99, ms", p99("status_lookup")),
        ("org-month rows", lambda r: f"{r['org_month']['org_month_rows']:,}"),
        ("org-month ungrouped p99, ms (roll-ups)", p99("org_month", "ungrouped")),
        ("org-month by model, day p99, ms (roll-ups)", p99("org_month", "by_model_day")),
        ("org-month ungrouped p99, ms (rows only)", p99("org_month_from_rows", "ungrouped")),
        ("org-month by model, day p99, ms (rows only)", p99("org_month_from_rows", "by_model_day")),
        *[(f"sweep: {name} p99, ms", p99("sweep", name)) for name in (
            "flag_for_reconciliation", "shards_waiting", "shards_with_voids_due", "stripe_events_unhandled",
            "stand_down_work_waiting", "reporter_read",
        )],
        ("stripe reconcile, database side, busiest day p99, ms", p99("reconcile_db")),
        ("usage failed --json p99, ms (own process)", p99("usage_failed", "process")),
        ("usage failed --json p99, ms (in process)", p99("usage_failed", "in_process")),
        ("ADD COLUMN (nullable), ms", lambda r: r["migration"]["add_nullable_column_ms"]),
    ]
    lines = ["| measure | " + " | ".join(f"{r['size']:,} rows" for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    lines += [f"| {name} | " + " | ".join(str(cell(r)) for r in results) + " |" for name, cell in measures]
    return "\n".join(lines)


def _dig(result: dict, *path):
    for key in path:
        result = result[key]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,10000000,50000000", help="table sizes to measure at, in rows, ascending")
    parser.add_argument("--runs", type=int, default=100, help="runs of each latency measure")
    parser.add_argument("--bulk", action="store_true", help="fill by the bulk path (_bulk_load): faster, compact indexes")
    parser.add_argument("--record-seconds", type=float, default=30.0, help="of recording, with and without the roll-ups each")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = run(sizes, runs=args.runs, record_seconds=args.record_seconds, bulk=args.bulk)
    print(json.dumps(results, indent=2))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
