"""initial schema

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organizations',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('stripe_customer_id', sa.Text(), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organizations')),
    sa.UniqueConstraint('name', name=op.f('uq_organizations_name'))
    )
    op.create_table('rejected_usage_events',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('rejected_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='1', nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_usage_events'))
    )
    roles = op.create_table('roles',
    sa.Column('id', sa.SmallInteger(), autoincrement=True, nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roles')),
    sa.UniqueConstraint('name', name=op.f('uq_roles_name'))
    )
    op.bulk_insert(roles, [{'name': 'superadmin'}, {'name': 'admin'}, {'name': 'member'}])
    op.create_table('services',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_services')),
    sa.UniqueConstraint('name', name=op.f('uq_services_name'))
    )
    op.create_table('text_model_costs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('model_name', sa.Text(), nullable=False),
    sa.Column('input_cost_per_token', sa.Numeric(precision=30, scale=18), nullable=False),
    sa.Column('output_cost_per_token', sa.Numeric(precision=30, scale=18), nullable=False),
    sa.Column('agent700_input_cost_per_token', sa.Numeric(precision=30, scale=18), nullable=False),
    sa.Column('agent700_output_cost_per_token', sa.Numeric(precision=30, scale=18), nullable=False),
    sa.Column('effective_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('input_cost_per_token >= 0 AND output_cost_per_token >= 0 AND agent700_input_cost_per_token >= 0 AND agent700_output_cost_per_token >= 0', name=op.f('ck_text_model_costs_rates_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_text_model_costs')),
    sa.UniqueConstraint('model_name', 'effective_from', name=op.f('uq_text_model_costs_model_name'))
    )
    op.create_table('users',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users'))
    )
    op.create_index('uq_users_email_lower', 'users', [sa.literal_column('lower(email)')], unique=True)
    op.create_table('app_passwords',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('lookup_prefix', sa.Text(), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_app_passwords_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_app_passwords')),
    sa.UniqueConstraint('lookup_prefix', name=op.f('uq_app_passwords_lookup_prefix'))
    )
    op.create_index('uq_app_passwords_user_id_name_live', 'app_passwords', ['user_id', 'name'], unique=True, postgresql_where=sa.text('revoked_at IS NULL'))
    op.create_table('organization_memberships',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_organization_memberships_organization_id_organizations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_organization_memberships_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organization_memberships')),
    sa.UniqueConstraint('user_id', 'organization_id', name=op.f('uq_organization_memberships_user_id'))
    )
    op.create_index(op.f('ix_organization_memberships_organization_id'), 'organization_memberships', ['organization_id'], unique=False)
    op.create_table('user_billable_request_logs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('service_id', sa.UUID(), nullable=True),
    sa.Column('agent_id', sa.UUID(), nullable=True),
    sa.Column('text_model_cost_id', sa.UUID(), nullable=False),
    sa.Column('model_name', sa.Text(), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('service_cost', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('agent700_cost', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('caller_user_id', sa.UUID(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('stripe_identifier', sa.Text(), nullable=False),
    sa.Column('stripe_value', sa.BigInteger(), nullable=False),
    sa.Column('stripe_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('stripe_reported_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('recorded', 'reported', 'failed')", name=op.f('ck_user_billable_request_logs_status_known')),
    sa.CheckConstraint('agent_id IS NOT NULL OR service_id IS NOT NULL', name=op.f('ck_user_billable_request_logs_linked_to_agent_or_service')),
    sa.CheckConstraint('input_tokens >= 0 AND output_tokens >= 0', name=op.f('ck_user_billable_request_logs_tokens_not_negative')),
    sa.ForeignKeyConstraint(['caller_user_id'], ['users.id'], name=op.f('fk_user_billable_request_logs_caller_user_id_users')),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_user_billable_request_logs_organization_id_organizations')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_user_billable_request_logs_service_id_services')),
    sa.ForeignKeyConstraint(['text_model_cost_id'], ['text_model_costs.id'], name=op.f('fk_user_billable_request_logs_text_model_cost_id_text_model_costs')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_billable_request_logs_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_billable_request_logs')),
    sa.UniqueConstraint('stripe_identifier', name=op.f('uq_user_billable_request_logs_stripe_identifier'))
    )
    op.create_index('ix_user_billable_request_logs_failed', 'user_billable_request_logs', ['recorded_at'], unique=False, postgresql_where=sa.text("status = 'failed'"))
    op.create_index('ix_user_billable_request_logs_org_occurred', 'user_billable_request_logs', ['organization_id', 'occurred_at'], unique=False)
    op.create_index('ix_user_billable_request_logs_unreported', 'user_billable_request_logs', ['organization_id', 'recorded_at'], unique=False, postgresql_where=sa.text("status = 'recorded'"))
    op.create_index('uq_user_billable_request_logs_caller_idempotency_key', 'user_billable_request_logs', ['caller_user_id', 'idempotency_key'], unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.create_table('membership_roles',
    sa.Column('membership_id', sa.UUID(), nullable=False),
    sa.Column('role_id', sa.SmallInteger(), nullable=False),
    sa.ForeignKeyConstraint(['membership_id'], ['organization_memberships.id'], name=op.f('fk_membership_roles_membership_id_organization_memberships'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name=op.f('fk_membership_roles_role_id_roles')),
    sa.PrimaryKeyConstraint('membership_id', 'role_id', name=op.f('pk_membership_roles'))
    )


def downgrade() -> None:
    op.drop_table('membership_roles')
    op.drop_index('uq_user_billable_request_logs_caller_idempotency_key', table_name='user_billable_request_logs', postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.drop_index('ix_user_billable_request_logs_unreported', table_name='user_billable_request_logs', postgresql_where=sa.text("status = 'recorded'"))
    op.drop_index('ix_user_billable_request_logs_org_occurred', table_name='user_billable_request_logs')
    op.drop_index('ix_user_billable_request_logs_failed', table_name='user_billable_request_logs', postgresql_where=sa.text("status = 'failed'"))
    op.drop_table('user_billable_request_logs')
    op.drop_index(op.f('ix_organization_memberships_organization_id'), table_name='organization_memberships')
    op.drop_table('organization_memberships')
    op.drop_index('uq_app_passwords_user_id_name_live', table_name='app_passwords', postgresql_where=sa.text('revoked_at IS NULL'))
    op.drop_table('app_passwords')
    op.drop_index('uq_users_email_lower', table_name='users')
    op.drop_table('users')
    op.drop_table('text_model_costs')
    op.drop_table('services')
    op.drop_table('roles')
    op.drop_table('rejected_usage_events')
    op.drop_table('organizations')
