"""What voids cost a report round (issue 22): the queries a round now makes for them,
against the round's own read of its rows, measured in the same run.

    .venv/bin/python -m bench.void_round          # --rows 200000 --voids 5000 --calls 2000

A fresh migrated database on the machine's PostgreSQL holds ``--rows`` reported log rows
of 8 organizations, ``--voids`` of them voided (completed), 50 manual-credit voids pending
(never due), and 100 recorded rows waiting in the measured shard. Each query is timed
``--calls`` times, one transaction each, as a round makes it:

1. ``read rows``: the round's read of its unreported rows (``reporting._unreported``), the
   reference: a round makes it anyway;
2. ``read rows, before voids``: the same read without the anti-join on ``usage_voids``;
3. ``due voids``: the round's new first query (``usage_voids.due_of``), in a transaction
   of its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import sqlalchemy as sa

from bench import harness
from shared import db, models, usage_voids
from worker import reporting

_logs = models.UserBillableRequestLog


def _fill(engine: sa.Engine, rows: int, voids: int) -> int:
    """The rows and voids described above; the measured shard."""
    with engine.begin() as connection:
        organization_ids = list(connection.scalars(sa.select(models.Organization.id)))
        user_id = connection.scalar(sa.select(models.User.id))
        service_id = connection.scalar(sa.select(models.Service.id))
        price_id = connection.scalar(sa.select(models.TextModelCost.id))
        shard = reporting.shard_of(organization_ids[0])
        columns = (
            "id, user_id, organization_id, service_id, text_model_cost_id, model_name, input_tokens, output_tokens, "
            "service_cost, agent700_cost, source, occurred_at, received_at, caller_user_id, status, stripe_identifier, "
            "stripe_value, stripe_reported_at, stripe_first_sent_at"
        )
        values = (
            "gen_random_uuid(), :user, (:orgs)[1 + n % :org_count], :service, :price, 'gpt-4o-mini', 100, 50, 0.00001, "
            "0.00002, 'bench', now() - interval '1 hour', now(), :user, :status, gen_random_uuid()::text, 20, {sent}, {sent}"
        )
        params = {"user": user_id, "orgs": organization_ids, "org_count": len(organization_ids), "service": service_id, "price": price_id}
        connection.execute(sa.text(
            f"INSERT INTO user_billable_request_logs ({columns}) SELECT {values.format(sent='now()')} FROM generate_series(1, :n) n"
        ), params | {"n": rows, "status": "reported"})
        connection.execute(sa.text(
            f"INSERT INTO user_billable_request_logs ({columns}) SELECT {values.format(sent='NULL')} FROM generate_series(1, :n) n"
        ), params | {"n": 100, "status": "recorded", "org_count": 1})
        connection.execute(sa.text(
            "INSERT INTO usage_voids (row_id, reason, requested_by, method, state, completed_at) "
            "SELECT id, 'bench', 'bench', 'stripe_cancel', 'completed', now() FROM user_billable_request_logs "
            "WHERE status = 'reported' LIMIT :n"
        ), {"n": voids})
        connection.execute(sa.text("UPDATE user_billable_request_logs SET status = 'voided' WHERE id IN (SELECT row_id FROM usage_voids)"))
        connection.execute(sa.text(
            "INSERT INTO usage_voids (row_id, reason, requested_by, method, state) "
            "SELECT id, 'bench', 'bench', 'manual_credit', 'pending' FROM user_billable_request_logs "
            "WHERE status = 'reported' LIMIT 50"
        ))
        connection.execute(sa.text("ANALYZE"))
    return shard


def _timed(database_url: str, query, calls: int) -> dict[str, float]:
    transaction = lambda: db.transaction(database_url)  # noqa: E731 - as the round opens them
    for _ in range(50):  # warm the pool and the plan cache
        with transaction() as session:
            session.execute(query).all()
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        with transaction() as session:
            session.execute(query).all()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return {"p50_ms": round(statistics.median(took), 3), "p99_ms": round(took[int(len(took) * 0.99)], 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--voids", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=2_000)
    args = parser.parse_args()
    with harness.environment(redis_db=12) as env:
        harness.seed(env, organizations=8)
        engine = sa.create_engine(env.database_url, poolclass=sa.pool.NullPool)
        shard = _fill(engine, args.rows, args.voids)
        in_shard = reporting._in_shard(shard)
        unreported = (
            sa.select(_logs.id, _logs.organization_id, _logs.stripe_value, _logs.occurred_at, _logs.recorded_at,
                      _logs.stripe_attempts, models.Organization.stripe_customer_id)
            .join(models.Organization, models.Organization.id == _logs.organization_id)
            .order_by(_logs.recorded_at)
            .limit(reporting.ROWS_PER_ROUND)
        )
        before_voids = sa.and_(_logs.status == models.UsageStatus.RECORDED, ~reporting.usage_rows.unreconciled())
        results = {
            "rows": args.rows, "voids_completed": args.voids, "calls": args.calls,
            "read rows": _timed(env.database_url, unreported.where(reporting._reportable(), in_shard), args.calls),
            "read rows, before voids": _timed(env.database_url, unreported.where(before_voids, in_shard), args.calls),
            "due voids": _timed(env.database_url, usage_voids.due_of(in_shard).limit(usage_voids.VOIDS_PER_ROUND), args.calls),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
