"""The billing schema, as SQLAlchemy 2.0 typed models.

Money and rates are ``numeric`` with 18 decimal places (the contract asks for at least
12); Python sees them as ``Decimal``. No column that holds money is a float.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import JSONB, UUID

RATE = sa.Numeric(30, 18)
MONEY = sa.Numeric(38, 18)
SUPERADMIN = "superadmin"
MAX_APP_PASSWORDS_PER_USER = 10


def _uuid_pk() -> orm.Mapped[uuid.UUID]:
    return orm.mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created_at() -> orm.Mapped[dt.datetime]:
    return orm.mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


class Base(orm.DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Organization(Base):
    __tablename__ = "organizations"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    name: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    stripe_customer_id: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    is_active: orm.Mapped[bool] = orm.mapped_column(default=True, server_default=sa.true())
    created_at: orm.Mapped[dt.datetime] = _created_at()


class User(Base):
    __tablename__ = "users"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    email: orm.Mapped[str] = orm.mapped_column(sa.Text)
    is_active: orm.Mapped[bool] = orm.mapped_column(default=True, server_default=sa.true())
    created_at: orm.Mapped[dt.datetime] = _created_at()

    __table_args__ = (sa.Index("uq_users_email_lower", sa.func.lower(email), unique=True),)


class Role(Base):
    __tablename__ = "roles"

    id: orm.Mapped[int] = orm.mapped_column(sa.SmallInteger, primary_key=True, autoincrement=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)


membership_roles = sa.Table(
    "membership_roles",
    Base.metadata,
    sa.Column(
        "membership_id",
        UUID(as_uuid=True),
        sa.ForeignKey("organization_memberships.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("role_id", sa.SmallInteger, sa.ForeignKey("roles.id"), primary_key=True),
)


class OrganizationMembership(Base):
    __tablename__ = "organization_memberships"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    user_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: orm.Mapped[uuid.UUID] = orm.mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    is_active: orm.Mapped[bool] = orm.mapped_column(default=True, server_default=sa.true())
    created_at: orm.Mapped[dt.datetime] = _created_at()

    roles: orm.Mapped[list[Role]] = orm.relationship(secondary=membership_roles)

    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id"),)


class AppPassword(Base):
    """A long-lived bearer secret. Only its SHA-256 is stored; it is shown once."""

    __tablename__ = "app_passwords"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    user_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: orm.Mapped[str] = orm.mapped_column(sa.Text)
    # The first characters after ``app_a7_``: an indexed lookup that reveals nothing usable.
    lookup_prefix: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    password_hash: orm.Mapped[str] = orm.mapped_column(sa.Text)
    created_at: orm.Mapped[dt.datetime] = _created_at()
    last_used_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    revoked_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (
        # A name is unique among a user's live passwords; a revoked one frees its name.
        sa.Index(
            "uq_app_passwords_user_id_name_live",
            "user_id",
            "name",
            unique=True,
            postgresql_where=sa.text("revoked_at IS NULL"),
        ),
    )


class Service(Base):
    __tablename__ = "services"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    name: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    created_at: orm.Mapped[dt.datetime] = _created_at()


class TextModelCost(Base):
    """Per-token rates of one model from ``effective_from`` until the next row's."""

    __tablename__ = "text_model_costs"

    id: orm.Mapped[uuid.UUID] = _uuid_pk()
    model_name: orm.Mapped[str] = orm.mapped_column(sa.Text)
    input_cost_per_token: orm.Mapped[Decimal] = orm.mapped_column(RATE)
    output_cost_per_token: orm.Mapped[Decimal] = orm.mapped_column(RATE)
    agent700_input_cost_per_token: orm.Mapped[Decimal] = orm.mapped_column(RATE)
    agent700_output_cost_per_token: orm.Mapped[Decimal] = orm.mapped_column(RATE)
    effective_from: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    created_at: orm.Mapped[dt.datetime] = _created_at()

    __table_args__ = (
        sa.UniqueConstraint("model_name", "effective_from"),
        sa.CheckConstraint(
            "input_cost_per_token >= 0 AND output_cost_per_token >= 0 AND "
            "agent700_input_cost_per_token >= 0 AND agent700_output_cost_per_token >= 0",
            name="rates_not_negative",
        ),
    )


class UsageStatus(enum.StrEnum):
    """A log row's state; its moves are ``shared.usage_rows``'s."""

    RECORDED = "recorded"  # costed and written; not yet confirmed by Stripe
    REPORTED = "reported"  # Stripe accepted the meter event
    FAILED = "failed"  # Stripe cannot take it as it is; see ``error``
    VOIDED = "voided"  # taken back: nothing of it is billed at Stripe (``UsageVoid``)


class UserBillableRequestLog(Base):
    """One billed usage event. Its id is the event id the API answered with."""

    __tablename__ = "user_billable_request_logs"

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("users.id"))
    organization_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("organizations.id"))
    service_id: orm.Mapped[uuid.UUID | None] = orm.mapped_column(sa.ForeignKey("services.id"))
    # Agent chats fill this; external services never do (the row is linked to the service).
    agent_id: orm.Mapped[uuid.UUID | None] = orm.mapped_column(UUID(as_uuid=True))
    text_model_cost_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("text_model_costs.id"))
    model_name: orm.Mapped[str] = orm.mapped_column(sa.Text)
    input_tokens: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    output_tokens: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    service_cost: orm.Mapped[Decimal] = orm.mapped_column(MONEY)
    agent700_cost: orm.Mapped[Decimal] = orm.mapped_column(MONEY)
    source: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    occurred_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    received_at: orm.Mapped[dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True))
    recorded_at: orm.Mapped[dt.datetime] = _created_at()
    caller_user_id: orm.Mapped[uuid.UUID] = orm.mapped_column(sa.ForeignKey("users.id"))
    idempotency_key: orm.Mapped[str | None] = orm.mapped_column(sa.String(255))
    # sha256 of the body first accepted under idempotency_key (the edge's replay check);
    # null for rows recorded before it was kept, and for events without a key.
    idempotency_fingerprint: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    status: orm.Mapped[str] = orm.mapped_column(sa.Text, default=UsageStatus.RECORDED)
    stripe_identifier: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
    stripe_value: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
    stripe_attempts: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0, server_default="0")
    # The Stripe call that carried the row last: when it started, its Idempotency-Key and
    # the event name it sent, so that an error report naming a request or an event name
    # finds its rows (worker/stripe_error_reports.py).
    stripe_reported_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    stripe_request_key: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    stripe_event_name: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # When a call first carried it (written before the call): Stripe may have counted it
    # since, so no send more than Stripe's 24-hour identifier window later goes out before
    # a reconciliation showed Stripe lacks it (shared/usage_rows.py).
    stripe_first_sent_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # Failed because it was not reported within Stripe's identifier window: Stripe may have
    # it, so it is re-sent only after `stripe reconcile` (shared/usage_rows.py).
    needs_reconciliation: orm.Mapped[bool] = orm.mapped_column(default=False, server_default=sa.false())

    __table_args__ = (
        sa.CheckConstraint("input_tokens >= 0 AND output_tokens >= 0", name="tokens_not_negative"),
        sa.CheckConstraint("status IN ('recorded', 'reported', 'failed', 'voided')", name="status_known"),
        sa.CheckConstraint(
            "agent_id IS NOT NULL OR service_id IS NOT NULL", name="linked_to_agent_or_service"
        ),
        # The same caller's Idempotency-Key can never make a second row.
        sa.Index(
            "uq_user_billable_request_logs_caller_idempotency_key",
            "caller_user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
        # The sweeper's and the reporter's lookup: rows not yet reported, oldest first.
        sa.Index(
            "ix_user_billable_request_logs_unreported",
            "organization_id",
            "recorded_at",
            postgresql_where=sa.text("status = 'recorded'"),
        ),
        sa.Index("ix_user_billable_request_logs_failed", "recorded_at", postgresql_where=sa.text("status = 'failed'")),
        # Reconciliation sums an organization's events over a time range.
        sa.Index("ix_user_billable_request_logs_org_occurred", "organization_id", "occurred_at"),
    )


# The log rows summed by organization, UTC hour, model, service, source and status (not by
# user: migration 0008 says why), for ``shared.usage_totals``.
# Written only by the triggers of migration 0008, in the transaction of each insert and
# move of log rows; a DELETE of log rows (retention) leaves them. No foreign keys: every
# row is derived from log rows that had them.
usage_hourly = sa.Table(
    "usage_hourly",
    Base.metadata,
    sa.Column("organization_id", UUID(as_uuid=True), nullable=False),
    sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("service_id", UUID(as_uuid=True)),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("service_cost", MONEY, nullable=False),
    sa.Column("agent700_cost", MONEY, nullable=False),
    sa.Column("stripe_value", sa.BigInteger, nullable=False),
    sa.Index(
        "uq_usage_hourly_key", "organization_id", "hour", "model_name", "service_id", "source", "status",
        unique=True, postgresql_nulls_not_distinct=True,
    ),
)


class VoidMethod(enum.StrEnum):
    """How a void takes an event back at Stripe (``shared.usage_voids``)."""

    NEVER_SENT = "never_sent"  # Stripe never billed it: nothing to do there
    STRIPE_CANCEL = "stripe_cancel"  # a meter event adjustment, within Stripe's 24 h
    STRIPE_NEGATIVE_EVENT = "stripe_negative_event"  # a meter event of the negated value
    MANUAL_CREDIT = "manual_credit"  # Stripe can no longer change it: finance credits it


class VoidState(enum.StrEnum):
    PENDING = "pending"  # Stripe's side (or finance's credit) is not done yet
    COMPLETED = "completed"  # nothing of the event remains billed
    FAILED = "failed"  # Stripe refused it for good, or its outcome needs an operator; see ``error``


class UsageVoid(Base):
    """A void of one log row: who asked, when and why, and what was sent to Stripe for it.
    Never deleted, never undone (``shared.usage_voids`` is its life)."""

    __tablename__ = "usage_voids"

    row_id: orm.Mapped[uuid.UUID] = orm.mapped_column(
        sa.ForeignKey("user_billable_request_logs.id"), primary_key=True
    )
    reason: orm.Mapped[str] = orm.mapped_column(sa.Text)
    requested_at: orm.Mapped[dt.datetime] = _created_at()
    # The caller's user id (the API), or ``operator:<login>`` (the command line).
    requested_by: orm.Mapped[str] = orm.mapped_column(sa.Text)
    method: orm.Mapped[str] = orm.mapped_column(sa.Text)
    state: orm.Mapped[str] = orm.mapped_column(sa.Text, default=VoidState.PENDING)
    completed_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    # What went to Stripe: the identifier the call named (the row's, for a cancel; the
    # negative event's own), the last call's Idempotency-Key, when a call first carried it.
    stripe_identifier: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    stripe_request_key: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    stripe_first_sent_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    stripe_attempts: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0, server_default="0")
    # Not asked again before this (Stripe still processing the row's own send).
    retry_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # A manual credit is complete once finance says it issued the credit note (this text).
    credit_note: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    # An operator who settled, after ``stripe reconcile``, what Stripe bills of the row
    # (``usage void-settled``), and what they saw; their method then stands.
    settled_by: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    settled_note: orm.Mapped[str | None] = orm.mapped_column(sa.Text)

    __table_args__ = (
        sa.CheckConstraint(
            "method IN ('never_sent', 'stripe_cancel', 'stripe_negative_event', 'manual_credit')", name="method_known"
        ),
        sa.CheckConstraint("state IN ('pending', 'completed', 'failed')", name="state_known"),
        sa.CheckConstraint("(state = 'completed') = (completed_at IS NOT NULL)", name="completed_when_completed"),
        sa.Index("ix_usage_voids_open", "requested_at", postgresql_where=sa.text("state <> 'completed'")),
    )


class RejectedUsageEvent(Base):
    """An accepted event the pipeline could not bill, kept with its reason until re-driven."""

    __tablename__ = "rejected_usage_events"

    id: orm.Mapped[uuid.UUID] = orm.mapped_column(UUID(as_uuid=True), primary_key=True)
    payload: orm.Mapped[dict] = orm.mapped_column(JSONB)
    reason: orm.Mapped[str] = orm.mapped_column(sa.Text)
    rejected_at: orm.Mapped[dt.datetime] = _created_at()
    attempts: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=1, server_default="1")
    resolved_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))


class StripeEvent(Base):
    """An event Stripe sent to the webhook (its asynchronous error reports), recorded on
    receipt so each is handled once however often Stripe delivers it."""

    __tablename__ = "stripe_events"

    id: orm.Mapped[str] = orm.mapped_column(sa.Text, primary_key=True)
    type: orm.Mapped[str] = orm.mapped_column(sa.Text)
    received_at: orm.Mapped[dt.datetime] = _created_at()
    handled_at: orm.Mapped[dt.datetime | None] = orm.mapped_column(sa.DateTime(timezone=True))
    outcome: orm.Mapped[str | None] = orm.mapped_column(sa.Text)

    __table_args__ = (
        # The sweep's lookup: events received and not yet handled (a lost task).
        sa.Index("ix_stripe_events_unhandled", "received_at", postgresql_where=sa.text("handled_at IS NULL")),
    )
