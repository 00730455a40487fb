"""usage_hourly: the log rows rolled up by organization, UTC hour, model, service, source and state

An organization-month of 5 M rows takes seconds to sum from the log rows on this
machine's 2 cores (BENCHMARKS.md, "The log table at scale"); ``usage totals`` answers
whole hours from this table instead. Its rows are kept by two statement-level triggers
on ``user_billable_request_logs``, in the transaction of the statement that inserts or
moves the rows, so every move of ``shared.usage_rows`` (report, fail, drop, redrive,
void, ...) and any future one is followed without its code naming the roll-up: an
UPDATE subtracts the rows as they were and adds them as they are. A DELETE is not
followed: the roll-ups outlive the log rows an operator deletes for retention (README).

Not by user: with the user in the key, an hour of a busy organization held a roll-up row
for every few log rows (50 users, each with their models, services and sources), and an
organization-month of 1 M rows still took 0.7 s from the roll-ups (BENCHMARKS.md). Totals
grouped by user are summed from the log rows.

Each statement's upsert takes its keys in one order, so two recorders adding to the same
keys wait for one another rather than deadlock.

Upgrading rolls up the rows already there in one statement, in the transaction that
created the triggers, so no row is counted twice or missed; writes to the log table wait
for it meanwhile: minutes for tens of millions of rows (the bulk fill of
``bench.table_scale`` runs the same statement over 50 M rows).

The cost: recording pays the insert trigger's grouped upsert (about 13 % of its rate in
``bench.table_scale``), every UPDATE of log rows its transition tables, and the current
hour's roll-up rows of a busy organization are a point where recorders and reporters
take turns (each holds them until its commit).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

LOGS = 'user_billable_request_logs'
KEYS = "organization_id, hour, model_name, service_id, source, status"
FIGURES = "events, input_tokens, output_tokens, service_cost, agent700_cost, stripe_value"
_ADD = ", ".join(f"{name} = h.{name} + excluded.{name}" for name in FIGURES.split(", "))


def _rolled_up(rows: str, sign: str = "1") -> str:
    """The roll-up rows of the log rows of ``rows``, each counted ``sign`` times."""
    return (
        f"SELECT organization_id, date_trunc('hour', occurred_at, 'UTC') AS hour, model_name, service_id, source,"
        f" status, {sign} AS events, {sign} * input_tokens AS input_tokens,"
        f" {sign} * output_tokens AS output_tokens, {sign} * service_cost AS service_cost,"
        f" {sign} * agent700_cost AS agent700_cost, {sign} * stripe_value AS stripe_value FROM {rows}"
    )


def _upsert(rows: str) -> str:
    return (
        f"INSERT INTO usage_hourly AS h ({KEYS}, {FIGURES})"
        f" SELECT {KEYS}, sum(events), sum(input_tokens), sum(output_tokens),"
        f" sum(service_cost), sum(agent700_cost), sum(stripe_value) FROM ({rows}) AS changed"
        f" GROUP BY {KEYS} ORDER BY {KEYS}"
        f" ON CONFLICT ({KEYS}) DO UPDATE SET {_ADD}"
    )


# What an UPDATE changed of a row that the roll-up holds.
_ROLLED_UP_COLUMNS = (
    "organization_id, occurred_at, model_name, service_id, source, status, input_tokens, output_tokens,"
    " service_cost, agent700_cost, stripe_value"
)
_CHANGED = (
    f"(SELECT o.* FROM old_rows o JOIN new_rows n USING (id)"
    f" WHERE (o.{_ROLLED_UP_COLUMNS.replace(', ', ', o.')}) IS DISTINCT FROM (n.{_ROLLED_UP_COLUMNS.replace(', ', ', n.')}))"
)


def upgrade() -> None:
    op.create_table(
        'usage_hourly',
        sa.Column('organization_id', UUID(as_uuid=True), nullable=False),
        sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
        sa.Column('model_name', sa.Text(), nullable=False),
        sa.Column('service_id', UUID(as_uuid=True), nullable=True),
        sa.Column('source', sa.String(64), nullable=False),
        sa.Column('status', sa.Text(), nullable=False),
        sa.Column('events', sa.BigInteger(), nullable=False),
        sa.Column('input_tokens', sa.BigInteger(), nullable=False),
        sa.Column('output_tokens', sa.BigInteger(), nullable=False),
        sa.Column('service_cost', sa.Numeric(38, 18), nullable=False),
        sa.Column('agent700_cost', sa.Numeric(38, 18), nullable=False),
        sa.Column('stripe_value', sa.BigInteger(), nullable=False),
    )
    op.create_index(
        'uq_usage_hourly_key', 'usage_hourly', KEYS.split(", "), unique=True, postgresql_nulls_not_distinct=True
    )
    moved = _CHANGED.replace("o.*", "n.*")
    op.execute(f"""
        CREATE FUNCTION usage_hourly_add_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {_upsert(_rolled_up('new_rows'))};
            RETURN NULL;
        END $$;
        CREATE FUNCTION usage_hourly_follow_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {_upsert(_rolled_up(_CHANGED + ' AS was', '-1') + ' UNION ALL ' + _rolled_up(moved + ' AS now'))};
            RETURN NULL;
        END $$;
        CREATE TRIGGER usage_hourly_insert AFTER INSERT ON {LOGS}
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_add_inserted();
        CREATE TRIGGER usage_hourly_update AFTER UPDATE ON {LOGS}
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
            EXECUTE FUNCTION usage_hourly_follow_update();
    """)
    op.execute(_upsert(_rolled_up(LOGS)))


def downgrade() -> None:
    op.execute(f"DROP TRIGGER usage_hourly_update ON {LOGS}; DROP TRIGGER usage_hourly_insert ON {LOGS}")
    op.execute("DROP FUNCTION usage_hourly_follow_update(); DROP FUNCTION usage_hourly_add_inserted()")
    op.drop_index('uq_usage_hourly_key', table_name='usage_hourly')
    op.drop_table('usage_hourly')
