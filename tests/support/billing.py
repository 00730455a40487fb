"""Billing data for the tests: the contract's constants, rows created directly in the
database (``Factory``), the billable world every suite starts from (``build_world``),
log rows as a worker writes them (``log_row``; ``UsageRecords`` adds rejected events),
and the database as the tests read it.

The world: active organizations (each with a Stripe customer of its own, created at the
local Stripe server too), an active superadmin of the first (the caller, with an App
Password and a JWT), a plain member of all of them (the user the usage is attributed
to), the service ``transcription``, and prices effective since 2020 (``gpt-4o-mini``
unless others are asked for).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
import sqlalchemy as sa

from shared import db, models
from shared.config import Settings
from shared.usage_event import AcceptedUsageEvent

URL = "/api/billing/external-usage"
BATCH_URL = f"{URL}/batch"
SERVICE = "transcription"
MODEL = "gpt-4o-mini"
METER_EVENT_NAME = "agent700_cost"
TEST_JWT_SECRET = "test-secret-that-is-at-least-32-bytes-long!"
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)

OMIT = object()  # a body field's value meaning "leave this field out"


@dataclass(frozen=True)
class Rates:
    """Per-token prices: what the provider charges, and what Agent700 bills."""

    input: str
    output: str
    agent700_input: str
    agent700_output: str


# Three models: round rates, Anthropic-like rates, and rates using all 18 decimal places.
PRICES = {
    MODEL: Rates("0.00000015", "0.0000006", "0.0000003", "0.0000012"),
    "claude-3-5-sonnet": Rates("0.000003", "0.000015", "0.0000036", "0.000018"),
    "precise-model": Rates(
        "0.000000000000000001", "0.123456789012345678", "0.000000000000000003", "0.987654321098765432"
    ),
}


class Factory:
    """Creates billing data directly in the database, committed, for tests to act on; an
    organization's Stripe customer is created at the local Stripe server too."""

    def __init__(self, settings: Settings, stripe=None):
        self.settings = settings
        self.stripe = stripe

    def _add(self, row):
        with db.transaction(self.settings.database_url) as session:
            session.add(row)
        return row

    def organization(self, *, name: str | None = None, stripe_customer_id: str | None = "cus_test", active: bool = True):
        if stripe_customer_id and self.stripe is not None:
            self.stripe.create_customers(stripe_customer_id)
        return self._add(
            models.Organization(
                name=name or f"org-{uuid.uuid4().hex[:8]}", stripe_customer_id=stripe_customer_id, is_active=active
            )
        )

    def user(self, *, email: str | None = None, active: bool = True):
        return self._add(models.User(email=email or f"{uuid.uuid4().hex[:8]}@example.test", is_active=active))

    def membership(self, user, organization, *roles: str, active: bool = True):
        with db.transaction(self.settings.database_url) as session:
            role_rows = session.scalars(sa.select(models.Role).where(models.Role.name.in_(roles))).all()
            membership = models.OrganizationMembership(
                user_id=user.id, organization_id=organization.id, is_active=active, roles=list(role_rows)
            )
            session.add(membership)
        return membership

    def superadmin(self, organization=None):
        """An active user who is superadmin in an active membership of an active organization."""
        user = self.user()
        self.membership(user, organization or self.organization(), models.SUPERADMIN)
        return user

    def app_password(self, user, *, name: str | None = None) -> str:
        from ingest_api.credentials import new_app_password

        secret = new_app_password()
        self._add(
            models.AppPassword(
                user_id=user.id,
                name=name or f"pw-{uuid.uuid4().hex[:6]}",
                lookup_prefix=secret.lookup_prefix,
                password_hash=secret.password_hash,
            )
        )
        return secret.token

    def jwt(self, user, ttl_seconds: int = 3600) -> str:
        from ingest_api.credentials import mint_jwt

        return mint_jwt(user.id, self.settings.jwt_secret, ttl_seconds)

    def service(self, name: str = SERVICE):
        return self._add(models.Service(name=name))

    def price(
        self,
        model_name: str = MODEL,
        *,
        input_cost: str = PRICES[MODEL].input,
        output_cost: str = PRICES[MODEL].output,
        agent700_input_cost: str = PRICES[MODEL].agent700_input,
        agent700_output_cost: str = PRICES[MODEL].agent700_output,
        effective_from: dt.datetime | None = None,
    ):
        return self._add(
            models.TextModelCost(
                model_name=model_name,
                input_cost_per_token=Decimal(input_cost),
                output_cost_per_token=Decimal(output_cost),
                agent700_input_cost_per_token=Decimal(agent700_input_cost),
                agent700_output_cost_per_token=Decimal(agent700_output_cost),
                effective_from=effective_from or EPOCH,
            )
        )


# --- the billable world -------------------------------------------------------------------


@dataclass
class World:
    settings: Settings
    organizations: list[models.Organization]
    caller: models.User  # the superadmin who calls the API
    user: models.User  # the member the usage is attributed to
    service: models.Service
    prices: dict[str, models.TextModelCost]
    app_password: str
    jwt: str

    @property
    def organization(self) -> models.Organization:
        return self.organizations[0]

    @property
    def price(self) -> models.TextModelCost:
        return self.prices[MODEL]

    def body(self, organization: models.Organization | None = None, **changes: Any) -> dict:
        """A valid API event body; ``field=value`` overrides, ``field=OMIT`` leaves it out."""
        body = {
            "user_id": str(self.user.id),
            "organization_id": str((organization or self.organization).id),
            "model_name": MODEL,
            "input_tokens": 1200,
            "output_tokens": 340,
            "service_name": SERVICE,
        }
        for field, value in changes.items():
            if value is OMIT:
                body.pop(field, None)
            else:
                body[field] = value
        return body

    def headers(self) -> dict[str, str]:
        """The caller's App Password as the API takes it."""
        return {"Authorization": f"Bearer {self.app_password}"}

    def event(self, **changes: Any) -> AcceptedUsageEvent:
        """The message the edge would queue for a valid event; ``field=value`` overrides."""
        now = dt.datetime.now(dt.UTC)
        fields = dict(
            id=uuid.uuid4(),
            user_id=self.user.id,
            organization_id=self.organization.id,
            service_name=SERVICE,
            model_name=MODEL,
            input_tokens=1200,
            output_tokens=340,
            source="external_api",
            occurred_at=now - dt.timedelta(minutes=5),
            received_at=now,
            caller_user_id=self.caller.id,
            idempotency_key=None,
        )
        fields.update(changes)
        return AcceptedUsageEvent(**fields)


def build_world(
    factory: Factory,
    *,
    organizations: int = 1,
    customer_ids: Iterable[str | None] | None = None,
    prices: Mapping[str, Rates] | None = None,
    password_name: str = "world",
) -> World:
    """The billable world (see the module's docstring): ``organizations`` of them, each
    with a new Stripe customer, or one per ``customer_ids`` (None: without a customer);
    prices for ``prices`` (``gpt-4o-mini`` alone by default)."""
    if customer_ids is None:
        customer_ids = [f"cus_{uuid.uuid4().hex[:14]}" for _ in range(organizations)]
    orgs = [factory.organization(stripe_customer_id=customer) for customer in customer_ids]
    caller = factory.superadmin(orgs[0])
    user = factory.user()
    for organization in orgs:
        factory.membership(user, organization, "member")
    service = factory.service(SERVICE)
    price_rows = {
        model: factory.price(
            model,
            input_cost=rates.input,
            output_cost=rates.output,
            agent700_input_cost=rates.agent700_input,
            agent700_output_cost=rates.agent700_output,
            effective_from=EPOCH,
        )
        for model, rates in (prices or {MODEL: PRICES[MODEL]}).items()
    }
    return World(
        settings=factory.settings,
        organizations=orgs,
        caller=caller,
        user=user,
        service=service,
        prices=price_rows,
        app_password=factory.app_password(caller, name=password_name),
        jwt=factory.jwt(caller),
    )


def build_world_with_every_price(
    factory: Factory, *, organizations: int = 1, customer_ids: Iterable[str | None] | None = None
) -> World:
    """The billable world with prices for every model of ``PRICES`` (the pipeline's tests)."""
    return build_world(factory, organizations=organizations, customer_ids=customer_ids, prices=PRICES, password_name="pipeline")


# --- log rows as a worker writes them ------------------------------------------------------


def log_row(
    *,
    user_id: uuid.UUID,
    organization_id: uuid.UUID,
    service_id: int,
    price: models.TextModelCost,
    agent700_cost: str = "0.000123450000",
    status: str = models.UsageStatus.RECORDED,
    stripe_value_decimals: int = 6,
    **columns: Any,
) -> models.UserBillableRequestLog:
    """A ``user_billable_request_logs`` row (not stored) as a worker records it: 100 input
    and 50 output tokens an hour ago, the service cost half of ``agent700_cost``, the
    Stripe value that cost in units of ``10^-stripe_value_decimals``, reported now if its
    ``status`` says so. ``columns`` override any value."""
    row_id = columns.pop("id", None) or uuid.uuid4()
    cost = Decimal(agent700_cost)
    now = dt.datetime.now(dt.UTC)
    values = dict(
        id=row_id,
        user_id=user_id,
        organization_id=organization_id,
        service_id=service_id,
        text_model_cost_id=price.id,
        model_name=price.model_name,
        input_tokens=100,
        output_tokens=50,
        service_cost=cost / 2,
        agent700_cost=cost,
        source="external_api",
        occurred_at=now - dt.timedelta(hours=1),
        received_at=now,
        caller_user_id=user_id,
        idempotency_key=None,
        status=status,
        stripe_identifier=str(row_id),
        stripe_value=int(cost.scaleb(stripe_value_decimals).to_integral_value()),
        stripe_reported_at=now if status == models.UsageStatus.REPORTED else None,
        error=None,
    ) | columns
    return models.UserBillableRequestLog(**values)


def store(settings: Settings, *rows) -> None:
    """Commit ``rows`` to the database, in one transaction."""
    with db.transaction(settings.database_url) as session:
        session.add_all(rows)


def no_customer_error(organization: models.Organization) -> str:
    """The reason the worker fails a row of ``organization`` when it has no Stripe customer
    id: the worker's own message (``shared.operator_messages``), not a copy of it."""
    from shared import operator_messages

    return operator_messages.no_stripe_customer(organization.id)


# ``UsageRecords.log``'s default reason: the worker's, for the row's organization.
_NO_CUSTOMER = object()


class UsageRecords:
    """Log rows (``log_row``) and rejected events of one user, service and price, committed
    directly, for the operator commands to act on."""

    def __init__(self, factory, settings):
        self.factory = factory
        self.settings = settings
        self.user = factory.user()
        self.service = factory.service()
        self.price = factory.price()

    def log(
        self,
        organization,
        *,
        status: str = models.UsageStatus.FAILED,
        error: str | None | object = _NO_CUSTOMER,
        agent700_cost: str = "0.000123450000",
        occurred_at: dt.datetime | None = None,
        needs_reconciliation: bool = False,
        stripe_first_sent_at: dt.datetime | None = None,
    ) -> models.UserBillableRequestLog:
        if error is _NO_CUSTOMER:
            error = no_customer_error(organization)
        row = log_row(
            user_id=self.user.id,
            organization_id=organization.id,
            service_id=self.service.id,
            price=self.price,
            agent700_cost=agent700_cost,
            status=status,
            stripe_value_decimals=self.settings.stripe_value_decimals,
            error=error,
            needs_reconciliation=needs_reconciliation,
            stripe_first_sent_at=stripe_first_sent_at,
            **({"occurred_at": occurred_at} if occurred_at else {}),
        )
        store(self.settings, row)
        return row

    def rejected(self, organization, *, reason: str = "Unknown service 'dictation'.", attempts: int = 1):
        event = AcceptedUsageEvent(
            id=uuid.uuid4(),
            user_id=self.user.id,
            organization_id=organization.id,
            service_name="dictation",
            model_name=self.price.model_name,
            input_tokens=7,
            output_tokens=3,
            source="external_api",
            occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
            received_at=dt.datetime.now(dt.UTC),
            caller_user_id=self.user.id,
            idempotency_key="retry-me-1",
        )
        with db.transaction(self.settings.database_url) as session:
            session.add(
                models.RejectedUsageEvent(
                    id=event.id, payload=event.model_dump(mode="json"), reason=reason, attempts=attempts
                )
            )
        return event



# --- the database as the tests read it ----------------------------------------------------


def log_rows(settings: Settings) -> list[models.UserBillableRequestLog]:
    """Every log row, oldest recorded first."""
    logs = models.UserBillableRequestLog
    with db.transaction(settings.database_url) as session:
        return list(session.scalars(sa.select(logs).order_by(logs.recorded_at)))


def status_counts(settings: Settings) -> dict[str, int]:
    """How many log rows have each status."""
    logs = models.UserBillableRequestLog
    with db.transaction(settings.database_url) as session:
        return dict(session.execute(sa.select(logs.status, sa.func.count()).group_by(logs.status)).all())





def forget_idempotency_claims(broker_url: str) -> None:
    """What 24 hours do to the edge's Idempotency-Key claims in Redis: they expire."""
    client = redis.Redis.from_url(broker_url)
    try:
        for name in client.scan_iter(match="billing:idem:*"):
            client.delete(name)
    finally:
        client.close()
