"""The operator commands' fixtures (the runner, ``runner``, is the suite's: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.billing import UsageRecords


@pytest.fixture
def usage_records(factory, settings) -> UsageRecords:
    """Log rows and rejected events of one user, service and price, committed directly."""
    return UsageRecords(factory, settings)
