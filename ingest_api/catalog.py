"""What the edge checks references against: services, priced models, users, organizations.

Kept in process memory for ``CATALOG_CACHE_SECONDS`` (5 s by default) so that accepting
an event needs no PostgreSQL round trip: a new service or price is seen by every web
process within that time. Users and organizations are remembered once seen to exist;
an id not (yet) known is looked up at once, so a new one is never refused.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from shared import db, models


@dataclass
class _Snapshot:
    loaded_at: float
    service_names: frozenset[str]
    first_price_at: dict[str, dt.datetime]  # model name -> earliest effective_from


@dataclass
class Catalog:
    database_url: str
    ttl_seconds: float
    _snapshot: _Snapshot | None = None
    _known_ids: dict[tuple[str, uuid.UUID], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.loaded_at >= self.ttl_seconds:
            with self._lock, db.engine_for(self.database_url).connect() as connection:
                services = connection.scalars(sa.select(models.Service.name))
                prices = connection.execute(
                    sa.select(models.TextModelCost.model_name, sa.func.min(models.TextModelCost.effective_from))
                    .group_by(models.TextModelCost.model_name)
                )
                snapshot = self._snapshot = _Snapshot(time.monotonic(), frozenset(services), dict(prices.all()))
        return snapshot

    def _exist(self, wanted: set[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        now = time.monotonic()
        missing = sorted((key for key in wanted if self._known_ids.get(key, 0) <= now), key=str)
        if missing:
            tables = {"user": models.User, "organization": models.Organization}
            with db.engine_for(self.database_url).connect() as connection:
                for kind, ident in missing:
                    if connection.scalar(sa.select(sa.exists().where(tables[kind].id == ident))):
                        self._known_ids[kind, ident] = now + max(self.ttl_seconds, 60.0)
        return {key for key in wanted if self._known_ids.get(key, 0) > now}

    def unknown_references(self, events) -> list[list[dict[str, str]]]:
        """For each event (its ``occurred_at`` resolved), the ``details`` of what does not exist."""
        snapshot = self._current()
        wanted = {(kind, ident) for e in events for kind, ident in (("user", e.user_id), ("organization", e.organization_id))}
        existing = self._exist(wanted)
        problems = []
        for event in events:
            details = []
            if event.service_name not in snapshot.service_names:
                details.append({"field": "service_name", "message": "Unknown service."})
            first_price_at = snapshot.first_price_at.get(event.model_name)
            if first_price_at is None:
                details.append({"field": "model_name", "message": "No price for this model in text_model_costs."})
            elif event.occurred_at < first_price_at:
                details.append({"field": "model_name", "message": "This model has no price in effect at occurred_at."})
            if ("user", event.user_id) not in existing:
                details.append({"field": "user_id", "message": "Unknown user."})
            if ("organization", event.organization_id) not in existing:
                details.append({"field": "organization_id", "message": "Unknown organization."})
            problems.append(details)
        return problems
