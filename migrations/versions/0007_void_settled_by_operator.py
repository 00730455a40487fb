"""usage_voids: a void settled by an operator after `stripe reconcile`

A void that Stripe's answers could not decide or confirm (its row flagged for
reconciliation, a cancel Stripe no longer finds a day later, a negative event not
confirmed within Stripe's identifier window) is settled by an operator once `stripe
reconcile` showed what Stripe bills of the row: who did, and what they saw, stay here.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('usage_voids', sa.Column('settled_by', sa.Text(), nullable=True))
    op.add_column('usage_voids', sa.Column('settled_note', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('usage_voids', 'settled_note')
    op.drop_column('usage_voids', 'settled_by')
