"""Configuration, read from the environment here and nowhere else.

The names are fixed by the contract. When ``DATABASE_URL`` and ``CELERY_BROKER_URL`` are
both unset this is "the local default run": an embedded PostgreSQL and Redis under
``var/``, a generated JWT secret and the project's local Stripe-compatible server.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping

LOCAL_STRIPE_URL = "http://127.0.0.1:12111"
LOCAL_STRIPE_API_KEY = "sk_test_local_agent700"
MIN_JWT_SECRET_BYTES = 32


class ConfigurationError(RuntimeError):
    """The environment does not allow the service to start safely."""


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    broker_url: str
    jwt_secret: str
    stripe_api_key: str
    stripe_api_base: str
    stripe_meter_events_base: str
    stripe_meter_event_name: str
    stripe_value_decimals: int
    flower_basic_auth: str | None
    port: int
    local_default_run: bool
    # Seconds the web process trusts its in-memory copy of services, prices, users and
    # organizations before reading them again (how fast a new price or service is seen).
    catalog_cache_seconds: float = 5.0
    # Seconds a web process trusts a caller it has verified against the database (active
    # superadmin). App Password revocation is still immediate (checked in Redis with
    # every publish); deactivating a user or removing the role takes up to this long.
    auth_cache_seconds: float = 5.0
    # Seconds a publish to the broker may take before the request answers 503.
    enqueue_timeout_seconds: float = 1.0
    # Port on which a Celery worker's main process serves /metrics for its host, when set
    # (workers on machines without a web process).
    worker_metrics_port: int | None = None
    # "v2": the meter event stream, 100 events per call (default); "v1": one call per event.
    stripe_meter_api: str = "v2"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings once; start the embedded servers if the URLs are unset."""
    from shared import embedded

    database_url = environ.get("DATABASE_URL") or None
    broker_url = environ.get("CELERY_BROKER_URL") or None
    local_default_run = database_url is None and broker_url is None

    jwt_secret = environ.get("JWT_SECRET") or None
    if jwt_secret is None:
        if not local_default_run:
            raise ConfigurationError(
                "JWT_SECRET is not set; it is required unless DATABASE_URL and "
                "CELERY_BROKER_URL are both unset (the local default run)"
            )
        jwt_secret = embedded.local_jwt_secret()
    if len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigurationError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes")

    stripe_api_key = environ.get("STRIPE_API_KEY") or None
    if stripe_api_key is None:
        stripe_api_key = LOCAL_STRIPE_API_KEY
        default_api_base = default_events_base = LOCAL_STRIPE_URL
    else:
        default_api_base = "https://api.stripe.com"
        default_events_base = "https://meter-events.stripe.com"

    value_decimals = _int(environ, "STRIPE_VALUE_DECIMALS", 6)
    if not 0 <= value_decimals <= 12:
        raise ConfigurationError("STRIPE_VALUE_DECIMALS must be between 0 and 12")

    stripe_meter_api = environ.get("STRIPE_METER_API") or "v2"
    if stripe_meter_api not in ("v1", "v2"):
        raise ConfigurationError("STRIPE_METER_API must be v1 or v2")

    database_url = database_url or embedded.postgres_url()
    return Settings(
        database_url=normalize_database_url(database_url),
        broker_url=broker_url or embedded.redis_url(),
        jwt_secret=jwt_secret,
        stripe_api_key=stripe_api_key,
        stripe_api_base=environ.get("STRIPE_API_BASE") or default_api_base,
        stripe_meter_events_base=environ.get("STRIPE_METER_EVENTS_BASE") or default_events_base,
        stripe_meter_event_name=environ.get("STRIPE_METER_EVENT_NAME") or "agent700_cost",
        stripe_value_decimals=value_decimals,
        flower_basic_auth=environ.get("FLOWER_BASIC_AUTH") or None,
        port=_int(environ, "PORT", 8000),
        local_default_run=local_default_run,
        catalog_cache_seconds=_float(environ, "CATALOG_CACHE_SECONDS", 5.0),
        auth_cache_seconds=_float(environ, "AUTH_CACHE_SECONDS", 5.0),
        enqueue_timeout_seconds=_float(environ, "ENQUEUE_TIMEOUT_SECONDS", 1.0),
        stripe_meter_api=stripe_meter_api,
        worker_metrics_port=_int(environ, "WORKER_METRICS_PORT", 0) or None,
    )


def normalize_database_url(url: str) -> str:
    """Accept the common ``postgres://`` / ``postgresql://`` forms; use psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return load_settings()
