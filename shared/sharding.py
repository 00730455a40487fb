"""How organizations are split among the Stripe reporters.

Stripe allows one concurrent meter call per customer per meter, so each shard of
organizations has at most one reporter at a time (see ``worker.reporting``). The web
side needs the same function to wake the right reporter (``usage retry``), so it lives
here, where both sides may import it.
"""

from __future__ import annotations

import uuid

REPORT_SHARDS = 8


def shard_of(organization_id: uuid.UUID) -> int:
    """The organization's shard: the last byte of its id, modulo ``REPORT_SHARDS``."""
    return organization_id.bytes[15] % REPORT_SHARDS
