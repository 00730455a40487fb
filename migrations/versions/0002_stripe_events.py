"""stripe_events: Stripe's asynchronous events received, each handled once

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('stripe_events',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('handled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events'))
    )
    op.create_index('ix_stripe_events_unhandled', 'stripe_events', ['received_at'], unique=False,
                    postgresql_where=sa.text('handled_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_stripe_events_unhandled', table_name='stripe_events', postgresql_where=sa.text('handled_at IS NULL'))
    op.drop_table('stripe_events')
