"""user_billable_request_logs.needs_reconciliation: a state, not a sentence

Rows flagged for reconciliation (not reported within Stripe's 24-hour identifier window)
were told apart by the exact text of their error. They now carry the flag in a column;
the rows flagged before this revision keep their meaning: the upgrade sets the flag on
every failed row whose error is that text, as the service wrote it until now.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# The exact error text the sweep wrote on a flagged row up to revision 0003 (frozen here:
# the service's own wording may change, these rows' cannot).
FLAGGED_UNTIL_0003 = (
    "Not reported within Stripe's 24-hour identifier window; run `stripe reconcile` for its "
    "organization before retrying, so it cannot be counted twice."
)


def upgrade() -> None:
    op.add_column(
        'user_billable_request_logs',
        sa.Column('needs_reconciliation', sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute(
        sa.text(
            "UPDATE user_billable_request_logs SET needs_reconciliation = true "
            "WHERE status = 'failed' AND error = :flagged"
        ).bindparams(flagged=FLAGGED_UNTIL_0003)
    )


def downgrade() -> None:
    op.drop_column('user_billable_request_logs', 'needs_reconciliation')
