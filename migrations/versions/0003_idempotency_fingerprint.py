"""user_billable_request_logs.idempotency_fingerprint: an Idempotency-Key is kept for ever

The fingerprint of the body first accepted under the row's Idempotency-Key, so that a
replay of the key after its 24 hours in Redis is still told apart from another body (409).
Rows recorded before this revision have none: a replay of one of their keys is answered
as the same event whatever its body (never billed twice).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('user_billable_request_logs', sa.Column('idempotency_fingerprint', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('user_billable_request_logs', 'idempotency_fingerprint')
