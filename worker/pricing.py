"""Costs of one usage event, exact: ``Decimal`` arithmetic that refuses to round.

``service_cost`` is what the provider charges, ``agent700_cost`` what the customer pays.
The Stripe meter value is ``agent700_cost`` in units of 10^-decimals USD, rounded
half-even to a whole number (the only rounding in the pipeline, and it is explicit).
"""

from __future__ import annotations

import bisect
import datetime as dt
import decimal
from dataclasses import dataclass
from decimal import Decimal

# Token counts have at most 10 digits and rates at most 30; a product needs at most 40,
# a sum 41. Any result that would need rounding raises decimal.Inexact instead.
_EXACT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])


@dataclass(frozen=True)
class Price:
    id: object
    model_name: str
    effective_from: dt.datetime
    input_cost_per_token: Decimal
    output_cost_per_token: Decimal
    agent700_input_cost_per_token: Decimal
    agent700_output_cost_per_token: Decimal

    @classmethod
    def from_row(cls, row) -> Price:
        """The rates of a ``text_model_costs`` row."""
        return cls(
            row.id, row.model_name, row.effective_from, row.input_cost_per_token, row.output_cost_per_token,
            row.agent700_input_cost_per_token, row.agent700_output_cost_per_token,
        )


@dataclass(frozen=True)
class Costs:
    service_cost: Decimal
    agent700_cost: Decimal


def costs(price: Price, input_tokens: int, output_tokens: int) -> Costs:
    with decimal.localcontext(_EXACT):
        return Costs(
            service_cost=input_tokens * price.input_cost_per_token + output_tokens * price.output_cost_per_token,
            agent700_cost=input_tokens * price.agent700_input_cost_per_token
            + output_tokens * price.agent700_output_cost_per_token,
        )


def stripe_value(agent700_cost: Decimal, decimals: int) -> int:
    """``agent700_cost × 10^decimals``, rounded half-even to an integer."""
    with decimal.localcontext(_EXACT):
        scaled = agent700_cost.scaleb(decimals)
    return int(scaled.quantize(Decimal(1), rounding=decimal.ROUND_HALF_EVEN, context=decimal.Context(prec=80)))


class PriceBook:
    """The price rows of some models, answering "which row was in effect at this time"."""

    def __init__(self, prices: list[Price]):
        self._by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            self._by_model.setdefault(price.model_name, []).append(price)
        self._starts = {model: [p.effective_from for p in rows] for model, rows in self._by_model.items()}

    def in_effect(self, model_name: str, at: dt.datetime) -> Price | None:
        """The row with the latest ``effective_from`` not after ``at``."""
        starts = self._starts.get(model_name)
        if not starts:
            return None
        position = bisect.bisect_right(starts, at)
        return self._by_model[model_name][position - 1] if position else None
