"""user_billable_request_logs: the Stripe call that carried a row, and its first send

``stripe_reported_at`` becomes the start of the call that carried the row (it was the end
of a whole round); ``stripe_request_key`` and ``stripe_event_name`` are that call's
Idempotency-Key and event name, so that an error report's samples (which name requests)
and ``no_meter_found`` (which concerns one event name) find their rows.
``stripe_first_sent_at`` is when a call first carried the row: no send more than 24 h
after it goes out before a reconciliation.

Rows written before this revision: their first send is taken as their report time, or,
for a row attempted but not reported, its recorded time (the earlier guess, so a resend
asks for reconciliation sooner rather than later). Their key and event name stay unknown
(null), and an error report treats an unknown event name as possibly its own.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TABLE = 'user_billable_request_logs'


def upgrade() -> None:
    op.add_column(TABLE, sa.Column('stripe_request_key', sa.Text(), nullable=True))
    op.add_column(TABLE, sa.Column('stripe_event_name', sa.Text(), nullable=True))
    op.add_column(TABLE, sa.Column('stripe_first_sent_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(
        f"UPDATE {TABLE} SET stripe_first_sent_at = coalesce(stripe_reported_at, recorded_at) "
        "WHERE stripe_reported_at IS NOT NULL OR stripe_attempts > 0"
    )


def downgrade() -> None:
    for column in ('stripe_first_sent_at', 'stripe_event_name', 'stripe_request_key'):
        op.drop_column(TABLE, column)
