"""Click parameter types for operator input: each turns text into a checked value or
a one-line usage error (exit code 2). Ids use ``click.UUID``; ``--org`` and ``--user``
are spelled once here for the commands that take them."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable
from decimal import Decimal

import click

# text_model_costs rates are numeric(30, 18): 18 decimal places, 12 integer digits.
RATE_DECIMAL_PLACES = 18
RATE_LIMIT = Decimal(10) ** 12
_SMALLEST_RATE_STEP = Decimal(1).scaleb(-RATE_DECIMAL_PLACES)

# Deliberately loose (one @, a dotted domain, no spaces): catches typos without refusing
# real addresses; whether the mailbox exists is not this command's business.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
MAX_EMAIL_LENGTH = 254

# RFC 3339 date-time: full date, full time with seconds, and a mandatory offset.
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

# Stripe customer ids look like ``cus_NffrFeUfNV2Hib``; refusing anything else catches a
# pasted price or subscription id before the billing worker meets it.
_STRIPE_CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9_-]{1,250}$")


class Label(click.ParamType):
    """A name: surrounding spaces trimmed, not empty, one line, at most ``max_length``."""

    name = "text"

    def __init__(self, max_length: int):
        self.max_length = max_length

    def convert(self, value, param, ctx) -> str:
        label = value.strip()
        if not label:
            self.fail("must not be empty.", param, ctx)
        if len(label) > self.max_length:
            self.fail(f"must be at most {self.max_length} characters.", param, ctx)
        if any(not character.isprintable() for character in label):
            self.fail(f"{value!r} contains control characters.", param, ctx)
        return label


class MatchingText(click.ParamType):
    """Text, stripped, that matches ``pattern`` (and is at most ``max_length`` long)."""

    def __init__(self, name: str, pattern: re.Pattern[str], what: str, max_length: int | None = None):
        self.name, self.pattern, self.what, self.max_length = name, pattern, what, max_length

    def convert(self, value, param, ctx) -> str:
        text = value.strip()
        if (self.max_length is not None and len(text) > self.max_length) or not self.pattern.match(text):
            self.fail(f"{value!r} is not {self.what}.", param, ctx)
        return text


class PerTokenRate(click.ParamType):
    """A non-negative decimal with at most 18 decimal places, parsed exactly (never float)."""

    name = "decimal"

    def convert(self, value, param, ctx) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            rate = Decimal(value)
        except decimal.InvalidOperation:
            self.fail(f"{value!r} is not a decimal number.", param, ctx)
        if not rate.is_finite():
            self.fail(f"{value!r} is not a finite decimal number.", param, ctx)
        if rate < 0:
            self.fail(f"{value!r} is negative; a rate must be zero or more.", param, ctx)
        if rate >= RATE_LIMIT:
            self.fail(f"{value!r} is too large for a per-token rate (limit {RATE_LIMIT:,}).", param, ctx)
        # Enough precision for 12 integer digits + 18 places, so quantize itself never rounds
        # the comparison away; trailing zeros past the 18th place lose nothing and pass.
        with decimal.localcontext(prec=RATE_DECIMAL_PLACES + 30):
            if rate.quantize(_SMALLEST_RATE_STEP, rounding=decimal.ROUND_DOWN) != rate:
                self.fail(
                    f"{value!r} has more than {RATE_DECIMAL_PLACES} decimal places; it would be rounded.",
                    param,
                    ctx,
                )
        return rate


class Rfc3339Time(click.ParamType):
    """An RFC 3339 time with its offset (``2025-01-01T00:00:00Z``), as an aware datetime."""

    name = "time"

    def convert(self, value, param, ctx) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = value.strip()
        if not _RFC3339_RE.match(text):
            self.fail(
                f"{value!r} is not an RFC 3339 time with a timezone, e.g. 2025-01-01T00:00:00Z.", param, ctx
            )
        try:
            return dt.datetime.fromisoformat(text.upper())
        except ValueError as error:
            self.fail(f"{value!r} is not a valid time: {error}.", param, ctx)


LABEL = Label(max_length=200)
EMAIL = MatchingText("email", _EMAIL_RE, "a valid email address", MAX_EMAIL_LENGTH)
STRIPE_CUSTOMER_ID = MatchingText("cus_id", _STRIPE_CUSTOMER_ID_RE, "a Stripe customer id (cus_...)")
PER_TOKEN_RATE = PerTokenRate()
RFC3339_TIME = Rfc3339Time()


def organization_option(help: str = "The organization's id.") -> Callable:  # noqa: A002 - click's own name
    """``--org ID``, passed as ``organization_id``."""
    return click.option("--org", "organization_id", required=True, type=click.UUID, help=help)


def user_option(help: str = "The user's id.") -> Callable:  # noqa: A002 - click's own name
    """``--user ID``, passed as ``user_id``."""
    return click.option("--user", "user_id", required=True, type=click.UUID, help=help)
