"""Costs exact to the last decimal, the Stripe value's half-even rounding, and which price
row is in effect at a time (``worker.pricing``; no database)."""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support.billing import PRICES, Rates
from tests.support.expected_bills import MAX_TOKENS
from worker import pricing


def price(rates: Rates, model: str = "m", effective_from: dt.datetime | None = None, id: object = 1) -> pricing.Price:
    return pricing.Price(
        id=id,
        model_name=model,
        effective_from=effective_from or dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        input_cost_per_token=Decimal(rates.input),
        output_cost_per_token=Decimal(rates.output),
        agent700_input_cost_per_token=Decimal(rates.agent700_input),
        agent700_output_cost_per_token=Decimal(rates.agent700_output),
    )


# (model, input tokens, output tokens) -> service_cost, agent700_cost, Stripe value (micro-dollars).
# Worked out by hand from the rates in PRICES (tokens × rate, digit by digit).
HAND_COMPUTED = [
    ("gpt-4o-mini", 0, 0, "0", "0", 0),
    ("gpt-4o-mini", 1, 0, "0.00000015", "0.0000003", 0),
    ("gpt-4o-mini", 0, 1, "0.0000006", "0.0000012", 1),
    ("gpt-4o-mini", 1, 1, "0.00000075", "0.0000015", 2),  # 1.5 -> 2 (half to even)
    ("gpt-4o-mini", 1200, 340, "0.000384", "0.000768", 768),
    ("gpt-4o-mini", MAX_TOKENS, 0, "322.12254705", "644.2450941", 644245094),
    ("gpt-4o-mini", 0, MAX_TOKENS, "1288.4901882", "2576.9803764", 2576980376),
    ("gpt-4o-mini", MAX_TOKENS, MAX_TOKENS, "1610.61273525", "3221.2254705", 3221225470),  # …470.5 -> even
    ("claude-3-5-sonnet", 0, 0, "0", "0", 0),
    ("claude-3-5-sonnet", 1, 0, "0.000003", "0.0000036", 4),
    ("claude-3-5-sonnet", 0, 1, "0.000015", "0.000018", 18),
    ("claude-3-5-sonnet", 1, 1, "0.000018", "0.0000216", 22),
    ("claude-3-5-sonnet", 1200, 340, "0.0087", "0.01044", 10440),
    ("claude-3-5-sonnet", MAX_TOKENS, 0, "6442.450941", "7730.9411292", 7730941129),
    ("claude-3-5-sonnet", 0, MAX_TOKENS, "32212.254705", "38654.705646", 38654705646),
    ("claude-3-5-sonnet", MAX_TOKENS, MAX_TOKENS, "38654.705646", "46385.6467752", 46385646775),
    ("precise-model", 0, 0, "0", "0", 0),
    ("precise-model", 1, 0, "0.000000000000000001", "0.000000000000000003", 0),
    ("precise-model", 0, 1, "0.123456789012345678", "0.987654321098765432", 987654),
    ("precise-model", 1, 1, "0.123456789012345679", "0.987654321098765435", 987654),
    ("precise-model", 1200, 340, "41.97530826419753172", "335.80246917358025048", 335802469),
    ("precise-model", MAX_TOKENS, 0, "0.000000002147483647", "0.000000006442450941", 0),
    ("precise-model", 0, MAX_TOKENS, "265121435.515141624616127666", "2120971503.448485837108890504", 2120971503448486),
    (
        "precise-model", MAX_TOKENS, MAX_TOKENS,
        "265121435.515141626763611313", "2120971503.448485843551341445", 2120971503448486,
    ),
]


@pytest.mark.parametrize(("model", "input_tokens", "output_tokens", "service_cost", "agent700_cost", "value"), HAND_COMPUTED)
def test_costs_are_exact_to_the_last_decimal(model, input_tokens, output_tokens, service_cost, agent700_cost, value):
    costs = pricing.costs(price(PRICES[model]), input_tokens, output_tokens)

    assert costs.service_cost == Decimal(service_cost)
    assert costs.agent700_cost == Decimal(agent700_cost)
    # Not merely equal: nothing was rounded away, every digit is there.
    assert Fraction(costs.service_cost) == Fraction(service_cost)
    assert Fraction(costs.agent700_cost) == Fraction(agent700_cost)
    assert isinstance(costs.service_cost, Decimal) and isinstance(costs.agent700_cost, Decimal)
    assert pricing.stripe_value(costs.agent700_cost, 6) == value


def test_costs_do_not_depend_on_the_callers_decimal_context():
    rates = PRICES["precise-model"]
    with decimal.localcontext(decimal.Context(prec=6, rounding=decimal.ROUND_DOWN)):
        costs = pricing.costs(price(rates), MAX_TOKENS, MAX_TOKENS)
        value = pricing.stripe_value(costs.agent700_cost, 6)
    assert costs.agent700_cost == Decimal("2120971503.448485843551341445")
    assert value == 2120971503448486


# --- property tests against arithmetic done independently (Fractions) ----------------------

tokens = st.integers(min_value=0, max_value=MAX_TOKENS)
# Any rate the schema can hold: numeric(30, 18), i.e. up to 12 integer and 18 decimal digits.
rates = st.integers(min_value=0, max_value=10**30 - 1).map(lambda n: Decimal(n).scaleb(-18))
sparse_rates = st.integers(min_value=0, max_value=10**9).map(lambda n: Decimal(n).scaleb(-15))


@given(
    input_tokens=tokens, output_tokens=tokens,
    rate_in=st.one_of(rates, sparse_rates), rate_out=st.one_of(rates, sparse_rates),
    a7_in=st.one_of(rates, sparse_rates), a7_out=st.one_of(rates, sparse_rates),
)
@example(input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS, rate_in=Decimal("999999999999.999999999999999999"),
         rate_out=Decimal("999999999999.999999999999999999"), a7_in=Decimal("0.000000000000000001"), a7_out=Decimal(0))
def test_costs_equal_fraction_arithmetic(input_tokens, output_tokens, rate_in, rate_out, a7_in, a7_out):
    row = pricing.Price(1, "m", dt.datetime(2020, 1, 1, tzinfo=dt.UTC), rate_in, rate_out, a7_in, a7_out)

    costs = pricing.costs(row, input_tokens, output_tokens)

    assert Fraction(costs.service_cost) == input_tokens * Fraction(rate_in) + output_tokens * Fraction(rate_out)
    assert Fraction(costs.agent700_cost) == input_tokens * Fraction(a7_in) + output_tokens * Fraction(a7_out)
    # At most the rates' 18 decimal places: numeric(38, 18) stores it without rounding.
    wide = decimal.Context(prec=80)
    for cost in (costs.service_cost, costs.agent700_cost):
        assert cost == cost.quantize(Decimal("1e-18"), context=wide)


costs_18 = st.integers(min_value=0, max_value=10**35).map(lambda n: Decimal(n).scaleb(-18))


@given(cost=costs_18, decimals=st.integers(min_value=0, max_value=12))
def test_stripe_value_is_half_even_rounding_of_the_scaled_cost(cost, decimals):
    # Python's round() of a Fraction rounds half to even: an independent implementation.
    assert pricing.stripe_value(cost, decimals) == round(Fraction(cost) * 10**decimals)


@given(whole=st.integers(min_value=0, max_value=10**15), decimals=st.integers(min_value=0, max_value=12))
def test_stripe_value_rounds_exact_halves_to_even(whole, decimals):
    # cost × 10^decimals == whole + 0.5 exactly
    cost = (Decimal(whole) + Decimal("0.5")).scaleb(-decimals)
    expected = whole if whole % 2 == 0 else whole + 1
    assert pricing.stripe_value(cost, decimals) == expected == round(Fraction(cost) * 10**decimals)


@given(whole=st.integers(min_value=0, max_value=10**15), nudge=st.integers(min_value=1, max_value=10**6))
def test_stripe_value_just_off_a_half_rounds_to_the_nearest(whole, nudge):
    # a hair below or above x.5 micro-dollars is not a tie
    half = (Decimal(whole) + Decimal("0.5")).scaleb(-6)
    epsilon = Decimal(nudge).scaleb(-18)
    assert pricing.stripe_value(half - epsilon, 6) == whole
    assert pricing.stripe_value(half + epsilon, 6) == whole + 1


@pytest.mark.parametrize(
    ("cost", "decimals", "value"),
    [
        ("0.0000005", 6, 0),
        ("0.0000015", 6, 2),
        ("0.0000025", 6, 2),
        ("0.0000035", 6, 4),
        ("0.000002500000000001", 6, 3),
        ("0.000002499999999999", 6, 2),
        ("1.5", 0, 2),
        ("2.5", 0, 2),
        ("0.000000000005", 11, 0),
        ("0.000000000015", 11, 2),
        ("0", 6, 0),
        ("123.456789", 6, 123456789),
    ],
)
def test_stripe_value_examples(cost, decimals, value):
    assert pricing.stripe_value(Decimal(cost), decimals) == value


# --- the price row in effect ----------------------------------------------------------------

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
T1 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
TICK = dt.timedelta(microseconds=1)


@pytest.fixture
def book():
    first = price(PRICES["gpt-4o-mini"], "gpt-4o-mini", T0, id="first")
    second = price(PRICES["claude-3-5-sonnet"], "gpt-4o-mini", T1, id="second")
    other = price(PRICES["precise-model"], "other", T1, id="other")
    # Deliberately out of order: the book sorts by effective_from.
    return pricing.PriceBook([second, other, first])


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (T0 - TICK, None),  # before any row
        (T0, "first"),  # exactly at effective_from: that row
        (T0 + TICK, "first"),
        (T1 - TICK, "first"),  # the last instant of the first row
        (T1, "second"),  # exactly at the new row's effective_from: the new row
        (T1 + TICK, "second"),
        (T1 + dt.timedelta(days=3650), "second"),
        (T1.astimezone(dt.timezone(dt.timedelta(hours=-7))), "second"),  # same instant, other offset
    ],
)
def test_price_in_effect_is_the_latest_effective_from_not_after_the_time(book, at, expected):
    found = book.in_effect("gpt-4o-mini", at)
    assert (found.id if found else None) == expected


def test_price_in_effect_for_an_unknown_model_is_none(book):
    assert book.in_effect("no-such-model", T1) is None
    assert book.in_effect("other", T1 - TICK) is None
    assert book.in_effect("other", T1).id == "other"


@given(
    starts=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8, unique=True),
    at=st.integers(min_value=-10, max_value=10**6 + 10),
)
def test_price_in_effect_matches_a_linear_scan(starts, at):
    moment = lambda seconds: T0 + dt.timedelta(seconds=seconds)  # noqa: E731
    rows = [price(PRICES["gpt-4o-mini"], "m", moment(s), id=s) for s in starts]
    found = pricing.PriceBook(rows).in_effect("m", moment(at))
    candidates = [s for s in starts if s <= at]
    assert (found.id if found else None) == (max(candidates) if candidates else None)
