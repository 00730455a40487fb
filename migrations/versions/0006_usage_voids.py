"""usage_voids: taking back an event that should never have been billed

One row per voided log row (never deleted): who asked, when and why, how Stripe's side
is done (``method``) and how far it got (``state``), and what was sent to Stripe. A log
row whose void is complete has status ``voided``.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LOGS = 'user_billable_request_logs'


def upgrade() -> None:
    op.drop_constraint(op.f('ck_user_billable_request_logs_status_known'), LOGS, type_='check')
    op.create_check_constraint(op.f('ck_user_billable_request_logs_status_known'), LOGS, "status IN ('recorded', 'reported', 'failed', 'voided')")
    op.create_table(
        'usage_voids',
        sa.Column('row_id', UUID(as_uuid=True), sa.ForeignKey(f'{LOGS}.id', name=op.f('fk_usage_voids_row_id_user_billable_request_logs')), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('requested_by', sa.Text(), nullable=False),
        sa.Column('method', sa.Text(), nullable=False),
        sa.Column('state', sa.Text(), nullable=False),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('stripe_identifier', sa.Text(), nullable=True),
        sa.Column('stripe_request_key', sa.Text(), nullable=True),
        sa.Column('stripe_first_sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('stripe_attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('credit_note', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('row_id', name=op.f('pk_usage_voids')),
        sa.CheckConstraint(
            "method IN ('never_sent', 'stripe_cancel', 'stripe_negative_event', 'manual_credit')",
            name=op.f('ck_usage_voids_method_known'),
        ),
        sa.CheckConstraint("state IN ('pending', 'completed', 'failed')", name=op.f('ck_usage_voids_state_known')),
        sa.CheckConstraint(
            "(state = 'completed') = (completed_at IS NOT NULL)", name=op.f('ck_usage_voids_completed_when_completed')
        ),
    )
    op.create_index(
        'ix_usage_voids_open', 'usage_voids', ['requested_at'], postgresql_where=sa.text("state <> 'completed'")
    )


def downgrade() -> None:
    op.drop_index('ix_usage_voids_open', table_name='usage_voids')
    op.drop_table('usage_voids')
    # A voided row keeps its status: with any left, the old constraint cannot be made, and
    # the downgrade stops rather than rewrite what was billed.
    op.drop_constraint(op.f('ck_user_billable_request_logs_status_known'), LOGS, type_='check')
    op.create_check_constraint(op.f('ck_user_billable_request_logs_status_known'), LOGS, "status IN ('recorded', 'reported', 'failed')")
