"""What a load of events must cost, and the check that it was billed exactly once.

* The expected costs of an event, computed here with their own exact arithmetic
  (``Fraction``), never with ``worker.pricing``.
* ``Load``: events posted through the batch endpoint, with what each must cost, and
  ``assert_billed_exactly_once``: one row, one meter event, equal totals.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import sqlalchemy as sa

from devtools.children import wait_until
from shared import db, models
from shared.config import Settings
from tests.support.billing import BATCH_URL, PRICES, Rates, World, log_rows, status_counts
from tests.support.intake_stream import stream_state

MAX_TOKENS = 2_147_483_647


def _as_decimal(value: Fraction) -> Decimal:
    """A Fraction whose denominator divides a power of ten, as the exact Decimal."""
    for places in range(0, 60):
        scaled = value * 10**places
        if scaled.denominator == 1:
            return Decimal(scaled.numerator).scaleb(-places)
    raise AssertionError(f"{value} is not a finite decimal")


def expected_costs(rates: Rates, input_tokens: int, output_tokens: int) -> tuple[Decimal, Decimal]:
    """(service_cost, agent700_cost), computed with Fractions (no Decimal context at all)."""
    service = input_tokens * Fraction(rates.input) + output_tokens * Fraction(rates.output)
    agent700 = input_tokens * Fraction(rates.agent700_input) + output_tokens * Fraction(rates.agent700_output)
    return _as_decimal(service), _as_decimal(agent700)


def expected_stripe_value(agent700_cost: Decimal, decimals: int = 6) -> int:
    """``agent700_cost × 10^decimals`` rounded half-even: Python's round() of a Fraction."""
    return round(Fraction(agent700_cost) * 10**decimals)


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    """A sum of Decimals that never rounds (the default context keeps only 28 digits)."""
    total = sum((Fraction(value) for value in values), Fraction(0))
    return _as_decimal(total)


def rejected_rows(settings: Settings) -> list[models.RejectedUsageEvent]:
    with db.transaction(settings.database_url) as session:
        return list(session.scalars(sa.select(models.RejectedUsageEvent)))


@dataclass(frozen=True)
class Expected:
    organization_id: uuid.UUID
    customer: str | None
    model_name: str
    input_tokens: int
    output_tokens: int
    occurred_at: dt.datetime
    service_cost: Decimal
    agent700_cost: Decimal
    stripe_value: int


@dataclass
class Load:
    """Events posted through ``POST .../batch`` (100 per call), each with its expected bill."""

    world: World
    seed: int = 4
    expected: dict[uuid.UUID, Expected] = field(default_factory=dict)

    def __post_init__(self):
        self._random = random.Random(self.seed)

    def bodies(self, count: int) -> list[dict]:
        now = dt.datetime.now(dt.UTC)
        bodies = []
        for _ in range(count):
            organization = self._random.choice(self.world.organizations)
            model = self._random.choice(list(PRICES))
            tokens = [self._random.choice([0, 1, MAX_TOKENS, self._random.randint(0, 200_000)]) for _ in range(2)]
            if model == "precise-model":
                # Its output rate is near $1 a token: billions of tokens would be a value of
                # more than the 15 digits Stripe takes (which the reporter refuses to send).
                tokens[1] = min(tokens[1], 200_000)
            occurred_at = (now - dt.timedelta(seconds=self._random.randint(0, 6 * 3600), microseconds=self._random.randint(0, 999_999)))
            bodies.append(
                self.world.body(
                    organization,
                    model_name=model,
                    input_tokens=tokens[0],
                    output_tokens=tokens[1],
                    occurred_at=occurred_at.isoformat().replace("+00:00", "Z"),
                )
            )
        return bodies

    def post(self, client, count: int, *, per_call: int = 100) -> list[uuid.UUID]:
        """Post ``count`` new events; every one must be queued. Returns their ids."""
        ids = []
        bodies = self.bodies(count)
        for start in range(0, count, per_call):
            chunk = bodies[start : start + per_call]
            response = client.post(BATCH_URL, json={"events": chunk}, headers=self.world.headers())
            assert response.status_code == 200, response.get_data(as_text=True)
            results = response.get_json()["results"]
            assert [r["status"] for r in results] == ["queued"] * len(chunk), results
            for body, result in zip(chunk, results, strict=True):
                event_id = uuid.UUID(result["id"])
                self.expect(event_id, body)
                ids.append(event_id)
        return ids

    def expect(self, event_id: uuid.UUID, body: dict) -> None:
        organization = next(o for o in self.world.organizations if str(o.id) == body["organization_id"])
        service_cost, agent700_cost = expected_costs(PRICES[body["model_name"]], body["input_tokens"], body["output_tokens"])
        self.expected[event_id] = Expected(
            organization_id=organization.id,
            customer=organization.stripe_customer_id,
            model_name=body["model_name"],
            input_tokens=body["input_tokens"],
            output_tokens=body["output_tokens"],
            occurred_at=dt.datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00")),
            service_cost=service_cost,
            agent700_cost=agent700_cost,
            stripe_value=expected_stripe_value(agent700_cost),
        )


def assert_billed_exactly_once(settings: Settings, stripe, load: Load, *, timeout: float = 90, diagnostics: Callable[[], str] = lambda: "") -> None:
    """Every event of the load ends reported, once: one row and one meter event each,
    values and totals equal to the last decimal, nothing left in the intake."""
    expected = load.expected

    def settled():
        counts = status_counts(settings)
        return counts.get("reported", 0) == len(expected) and sum(counts.values()) == len(expected) and stream_state(settings.broker_url, settings.redis_sentinel) == {"entries": 0, "pending": 0, "queued": 0}

    wait_until(
        settled,
        timeout,
        interval=0.25,
        message=lambda: f"rows {status_counts(settings)} of {len(expected)}, intake {stream_state(settings.broker_url, settings.redis_sentinel)}, "
        f"meter events {len(stripe.meter_events())}\n{diagnostics()}",
    )

    rows = {row.id: row for row in log_rows(settings)}
    assert set(rows) == set(expected)
    for event_id, want in expected.items():
        row = rows[event_id]
        assert (row.status, row.error) == ("reported", None)
        assert row.stripe_reported_at is not None
        assert (row.organization_id, row.model_name, row.input_tokens, row.output_tokens) == (
            want.organization_id, want.model_name, want.input_tokens, want.output_tokens,
        )
        assert row.occurred_at == want.occurred_at
        assert (row.service_cost, row.agent700_cost, row.stripe_value) == (want.service_cost, want.agent700_cost, want.stripe_value), event_id
        assert row.stripe_identifier == str(event_id)
    assert rejected_rows(settings) == []

    events = stripe.meter_events()
    identifiers = [event["identifier"] for event in events]
    assert len(identifiers) == len(set(identifiers)), "a row reached Stripe twice"
    assert set(identifiers) == {str(event_id) for event_id in expected}
    for event in events:
        want = expected[uuid.UUID(event["identifier"])]
        assert event["event_name"] == settings.stripe_meter_event_name
        assert (event["customer"], int(event["value"])) == (want.customer, want.stripe_value)
        assert event["timestamp"] == int(want.occurred_at.timestamp())

    expected_cost_total = exact_sum(want.agent700_cost for want in expected.values())
    expected_value_total = sum(want.stripe_value for want in expected.values())
    assert exact_sum(row.agent700_cost for row in rows.values()) == expected_cost_total
    assert exact_sum(row.service_cost for row in rows.values()) == exact_sum(w.service_cost for w in expected.values())
    assert sum(row.stripe_value for row in rows.values()) == expected_value_total
    assert exact_sum(Decimal(event["value"]) for event in events) == expected_value_total
    # The totals themselves, to the last decimal: the rounding of the sum is the sum of the roundings.
    assert expected_value_total == sum(expected_stripe_value(want.agent700_cost) for want in expected.values())



