"""What the edge checks references against: services, priced models, users, organizations,
and that the user holds a membership (active or not) in the organization billed.

Kept in process memory for ``CATALOG_CACHE_SECONDS`` (5 s by default) so that accepting
an event needs no PostgreSQL round trip: a new service or price is seen by every web
process within that time. Users, organizations and memberships are remembered once seen
to exist; one not (yet) known is looked up at once, so a new one is never refused (and
a refusal is never remembered).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from shared import db, models

_USER_ORGANIZATION_MEMBERSHIP = sa.select(
    sa.exists().where(models.User.id == sa.bindparam("u")),
    sa.exists().where(models.Organization.id == sa.bindparam("o")),
    sa.exists().where(
        models.OrganizationMembership.user_id == sa.bindparam("u"),
        models.OrganizationMembership.organization_id == sa.bindparam("o"),
    ),
)


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
    # ("user", id), ("organization", id), ("membership", user_id, organization_id) -> until
    _known_ids: dict[tuple, float] = field(default_factory=dict)
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

    def _exist(self, pairs: set[tuple[uuid.UUID, uuid.UUID]]) -> set[tuple]:
        """Of the (user, organization) pairs, which of their users, organizations and
        memberships exist: ``("user", id)``, ``("organization", id)``, ``("membership",
        user_id, organization_id)``. A pair whose membership was seen needs no query; one
        not (yet) seen is looked up at once, so a membership added a moment ago counts."""
        now = time.monotonic()
        missing = sorted((pair for pair in pairs if self._known_ids.get(("membership", *pair), 0) <= now), key=str)
        if missing:
            with db.engine_for(self.database_url).connect() as connection:
                for user_id, organization_id in missing:
                    found = connection.execute(_USER_ORGANIZATION_MEMBERSHIP, {"u": user_id, "o": organization_id}).one()
                    keys = (("user", user_id), ("organization", organization_id), ("membership", user_id, organization_id))
                    for key, exists in zip(keys, found, strict=True):
                        if exists:
                            self._known_ids[key] = now + max(self.ttl_seconds, 60.0)
        wanted = {key for u, o in pairs for key in (("user", u), ("organization", o), ("membership", u, o))}
        return {key for key in wanted if self._known_ids.get(key, 0) > now}

    def unknown_references(self, events) -> list[list[dict[str, str]]]:
        """For each event (its ``occurred_at`` resolved), the ``details`` of what does not exist."""
        snapshot = self._current()
        existing = self._exist({(e.user_id, e.organization_id) for e in events})
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
            elif ("user", event.user_id) in existing and ("membership", event.user_id, event.organization_id) not in existing:
                # Usage is billed to the organization its user belongs to, never across.
                details.append({"field": "user_id", "message": "The user holds no membership in this organization."})
            problems.append(details)
        return problems
