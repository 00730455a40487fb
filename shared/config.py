"""Configuration, read from the environment here and nowhere else, with no side effects.

The names are fixed by the contract. When ``DATABASE_URL`` and ``CELERY_BROKER_URL`` are
both unset this is "the local default run": the embedded PostgreSQL and Redis under
``var/`` (which ``make run`` starts; reading the settings only finds them), the JWT
secret and Flower password it generated there, and the project's local
Stripe-compatible server. Outside it, ``JWT_SECRET`` and ``STRIPE_API_KEY`` must be set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

# ``shared.embedded`` takes its directory from here (``var_dir``), so the readers that
# look for the local run import it when they run, not at the top.
from shared import jwt_keys

LOCAL_STRIPE_URL = "http://127.0.0.1:12111"
LOCAL_STRIPE_API_KEY = "sk_test_local_agent700"
MIN_JWT_SECRET_BYTES = 32
# A JWT cannot be revoked: whoever holds one is the user until its exp. A day bounds the
# damage of a leaked token while covering a working day or a nightly job; callers that
# need longer use an App Password, which can be revoked.
DEFAULT_JWT_MAX_LIFETIME_SECONDS = 86400
# Stripe documents no bound on its summaries' lag; a quarter of an hour is this service's guess,
# to be raised if `stripe reconcile` ever shows a window still catching up after it.
DEFAULT_SUMMARY_SETTLE_SECONDS = 900.0
# A replica on the same network acknowledges in well under a millisecond; half a second
# covers a busy one, and leaves the publish bound (ENQUEUE_TIMEOUT_SECONDS) room to retry.
DEFAULT_REDIS_ACK_TIMEOUT_MS = 500
DEFAULT_SENTINEL_MASTER = "agent700"
# Plain-http JWKS only on the loopback interface (tests, a local identity provider): keys
# fetched over the network without TLS could be swapped, and with them any token accepted.
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def var_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the local run keeps its embedded servers and generated secrets, and where
    metrics and beat's schedule go by default: ``AGENT700_VAR_DIR``, else ``var/`` of the
    checkout when running from one (``make run``, the tests: the same directory whatever
    the current one); installed from a wheel there is no checkout, and never a writable
    place inside site-packages, so ``var/`` of the current directory."""
    if environ.get("AGENT700_VAR_DIR"):
        return Path(environ["AGENT700_VAR_DIR"])
    source_tree = Path(__file__).resolve().parent.parent
    if (source_tree / "setup.cfg").is_file():
        return source_tree / "var"
    return Path.cwd() / "var"


def prometheus_multiproc_dir(environ: Mapping[str, str] = os.environ) -> str:
    """Where this host's processes write their metrics (``shared.metrics``):
    ``PROMETHEUS_MULTIPROC_DIR`` if set, else ``prometheus`` in the var directory."""
    return environ.get("PROMETHEUS_MULTIPROC_DIR", str(var_dir(environ) / "prometheus"))


class ConfigurationError(RuntimeError):
    """The environment does not allow the service to start safely."""


@dataclasses.dataclass(frozen=True)
class RedisSentinel:
    """Where the Sentinels are, which primary they watch, and the passwords of both: the
    production layout with no single Redis host (``shared.redis_connection`` connects)."""

    addresses: tuple[tuple[str, int], ...]
    master_name: str
    # The primary's and replicas' password (``requirepass``), and the Sentinels' own.
    password: str | None = None
    sentinel_password: str | None = None


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
    # Address the web process (and Flower, through the local run) listens on: every
    # interface by default, 127.0.0.1 in the local run.
    host: str = "0.0.0.0"
    # Seconds the web process trusts its in-memory copy of services, prices, users and
    # organizations before reading them again (how fast a new price or service is seen).
    catalog_cache_seconds: float = 5.0
    # Seconds a web process trusts a caller it has verified against the database (active
    # superadmin). App Password revocation is still immediate (checked in Redis with
    # every publish); deactivating a user or removing the role takes up to this long.
    auth_cache_seconds: float = 5.0
    # Seconds a publish may wait for the broker (a restart, a lost reply) before the
    # request answers 503: "nothing accepted", or "outcome unknown" with the event's id.
    enqueue_timeout_seconds: float = 3.0
    # Seconds an accept that found no script call in flight waits for others to join its
    # group (``shared.intake``). 0: none; a group is then whatever arrived while the
    # previous call was in flight, which under load is plenty and costs a lone request
    # nothing. Each group's call is one round trip and one fsync of Redis's AOF.
    accept_group_window_seconds: float = 0.0
    # Port on which a Celery worker's main process serves /metrics for its host, when set
    # (workers on machines without a web process).
    worker_metrics_port: int | None = None
    # "v2": the meter event stream, 100 events per call (default); "v1": one call per event.
    stripe_meter_api: str = "v2"
    # The signing secret (whsec_...) of the Stripe event destination that sends the
    # meters' asynchronous error reports to POST /api/stripe/events; unset, that endpoint
    # refuses every delivery (it cannot tell Stripe's from a forgery).
    stripe_webhook_secret: str | None = None
    # Stripe's meter event summaries are eventually consistent (its docs give no bound): an
    # error report's window is compared with them only this long after the window ended;
    # before that the comparison waits rather than fail rows Stripe did count.
    stripe_summary_settle_seconds: float = DEFAULT_SUMMARY_SETTLE_SECONDS
    # When set, a JWT must carry this audience (``aud``, a string or a list holding it) /
    # this issuer (``iss``). When unset neither is required, and a token naming an
    # audience is refused (RFC 7519: it is meant for someone who is not known to be us).
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # The longest a JWT may still have to live (``exp`` minus now), and the longest it may
    # have been issued for (``exp`` minus ``iat``, when it has an ``iat``).
    jwt_max_lifetime_seconds: int = DEFAULT_JWT_MAX_LIFETIME_SECONDS
    # Public keys that verify RS256/ES256 tokens, so other services need not hold
    # JWT_SECRET: a PEM public key, or a JWKS endpoint (at most one of the two). HS256
    # tokens signed with JWT_SECRET are accepted besides (``tokens mint`` signs them).
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    # Set: every Redis client finds the primary through these Sentinels, and
    # ``broker_url`` is kombu's ``sentinel://`` form of them.
    redis_sentinel: RedisSentinel | None = None
    # Replicas that must confirm an accept (Redis ``WAIT``) before it gets a 2xx, and how
    # long the primary waits for them; 0: the primary's answer is enough.
    redis_ack_replicas: int = 0
    redis_ack_timeout_ms: int = DEFAULT_REDIS_ACK_TIMEOUT_MS

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def stripe_error_reports_blind(self) -> bool:
        """Whether Stripe may drop reported events without the service ever learning of
        it: the v2 stream answers before it validates, and tells of what it drops only
        through the event destination, whose deliveries the web refuses without a
        signing secret. v1 answers each event's call with its outcome."""
        return self.stripe_meter_api == "v2" and not self.stripe_webhook_secret


def _number(environ: Mapping[str, str], name: str, default: float, kind: type = int):
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings; the embedded servers are only looked for, never started.

    One reader per area. They run in this order so that, of several problems, the one
    reported is always the same."""
    local_default_run = not any(environ.get(name) for name in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_SENTINELS"))
    jwt_secret = _read_jwt_secret(environ, local_default_run)
    settings = Settings(
        database_url=_read_database_url(environ),
        **_read_redis(environ),
        jwt_secret=jwt_secret,
        **_read_stripe(environ, local_default_run),
        **_read_flower(environ, local_default_run),
        **_read_jwt_verification(environ),
        **_read_web(environ),
        **_read_worker(environ),
    )
    if settings.redis_ack_timeout_ms >= settings.enqueue_timeout_seconds * 1000:
        # The replicas' answer could never come within the publish bound.
        raise ConfigurationError("REDIS_ACK_TIMEOUT_MS must be below ENQUEUE_TIMEOUT_SECONDS")
    return settings


def _required_outside_the_local_run(environ: Mapping[str, str], name: str, local_default_run: bool) -> str | None:
    """The variable's value; None in the local default run, which supplies its own."""
    value = environ.get(name) or None
    if value is None and not local_default_run:
        raise ConfigurationError(
            f"{name} is not set; it is required unless DATABASE_URL and "
            "CELERY_BROKER_URL are both unset (the local default run)"
        )
    return value


def _read_jwt_secret(environ: Mapping[str, str], local_default_run: bool) -> str:
    from shared import embedded

    jwt_secret = _required_outside_the_local_run(environ, "JWT_SECRET", local_default_run)
    if jwt_secret is None:
        jwt_secret = embedded.local_secret(embedded.JWT_SECRET_FILE)
        if jwt_secret is None:
            raise ConfigurationError(f"JWT_SECRET is not set and the local run has not generated {embedded.JWT_SECRET_FILE} (make run does)")
    if len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigurationError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes")
    return jwt_secret


def _read_database_url(environ: Mapping[str, str]) -> str:
    from shared import embedded

    database_url = environ.get("DATABASE_URL") or embedded.running_postgres_url()
    if database_url is None:
        raise ConfigurationError("DATABASE_URL is not set and no embedded PostgreSQL runs under var/ (make run starts one)")
    return normalize_database_url(database_url)


def _read_redis(environ: Mapping[str, str]) -> dict:
    """One Redis URL (``CELERY_BROKER_URL``, else the embedded one), or Sentinels."""
    from shared import embedded

    ack_replicas = _number(environ, "REDIS_ACK_REPLICAS", 0)
    ack_timeout_ms = _number(environ, "REDIS_ACK_TIMEOUT_MS", DEFAULT_REDIS_ACK_TIMEOUT_MS)
    if ack_replicas < 0:
        raise ConfigurationError("REDIS_ACK_REPLICAS must be a number of replicas >= 0")
    if ack_timeout_ms <= 0:  # WAIT 0 blocks forever
        raise ConfigurationError("REDIS_ACK_TIMEOUT_MS must be a number of milliseconds above 0")
    acknowledgement = dict(redis_ack_replicas=ack_replicas, redis_ack_timeout_ms=ack_timeout_ms)

    sentinels = environ.get("REDIS_SENTINELS") or None
    if sentinels is None:
        broker_url = environ.get("CELERY_BROKER_URL") or embedded.running_redis_url()
        if broker_url is None:
            raise ConfigurationError("CELERY_BROKER_URL is not set and no embedded Redis runs under var/ (make run starts one)")
        return dict(broker_url=broker_url, **acknowledgement)
    if environ.get("CELERY_BROKER_URL"):
        raise ConfigurationError("Set CELERY_BROKER_URL or REDIS_SENTINELS, not both")
    sentinel = RedisSentinel(
        addresses=tuple(_host_port(address.strip()) for address in sentinels.split(",") if address.strip()),
        master_name=environ.get("REDIS_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER,
        password=environ.get("REDIS_PASSWORD") or None,
        sentinel_password=environ.get("REDIS_SENTINEL_PASSWORD") or None,
    )
    return dict(broker_url=sentinel_broker_url(sentinel), redis_sentinel=sentinel, **acknowledgement)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"REDIS_SENTINELS must list host:port addresses, got {address!r}")
    return host.strip("[]"), int(port)


def sentinel_broker_url(sentinel: RedisSentinel) -> str:
    """Kombu's form (``sentinel://:password@host:port;...``): the password in it is the
    primary's; the Sentinels' goes in the transport options (``celeryconfig``)."""
    credentials = f":{urllib.parse.quote(sentinel.password, safe='')}@" if sentinel.password else ""
    return ";".join(f"sentinel://{credentials}{host}:{port}" for host, port in sentinel.addresses)


def _read_stripe(environ: Mapping[str, str], local_default_run: bool) -> dict:
    from shared import embedded

    # Like JWT_SECRET: outside the local default run, a missing key would quietly send
    # every meter event to a local Stripe server nobody runs, instead of refusing to start.
    stripe_api_key = _required_outside_the_local_run(environ, "STRIPE_API_KEY", local_default_run)
    if stripe_api_key is None:
        stripe_api_key = LOCAL_STRIPE_API_KEY
        default_api_base = default_events_base = LOCAL_STRIPE_URL
    else:
        default_api_base = "https://api.stripe.com"
        default_events_base = "https://meter-events.stripe.com"

    value_decimals = _number(environ, "STRIPE_VALUE_DECIMALS", 6)
    if not 0 <= value_decimals <= 12:
        raise ConfigurationError("STRIPE_VALUE_DECIMALS must be between 0 and 12")

    stripe_meter_api = environ.get("STRIPE_METER_API") or "v2"
    if stripe_meter_api not in ("v1", "v2"):
        raise ConfigurationError("STRIPE_METER_API must be v1 or v2")
    settle_seconds = _number(environ, "STRIPE_SUMMARY_SETTLE_SECONDS", DEFAULT_SUMMARY_SETTLE_SECONDS, float)
    if settle_seconds < 0:
        raise ConfigurationError("STRIPE_SUMMARY_SETTLE_SECONDS must be a number of seconds >= 0")

    return dict(
        stripe_api_key=stripe_api_key,
        stripe_api_base=environ.get("STRIPE_API_BASE") or default_api_base,
        stripe_meter_events_base=environ.get("STRIPE_METER_EVENTS_BASE") or default_events_base,
        stripe_meter_event_name=environ.get("STRIPE_METER_EVENT_NAME") or "agent700_cost",
        stripe_value_decimals=value_decimals,
        stripe_meter_api=stripe_meter_api,
        stripe_summary_settle_seconds=settle_seconds,
        stripe_webhook_secret=environ.get("STRIPE_WEBHOOK_SECRET") or (
            embedded.local_secret(embedded.STRIPE_WEBHOOK_SECRET_FILE) if local_default_run else None
        ),
    )


def _read_flower(environ: Mapping[str, str], local_default_run: bool) -> dict:
    from shared import embedded

    flower_basic_auth = environ.get("FLOWER_BASIC_AUTH") or None
    if flower_basic_auth is None and local_default_run:
        flower_basic_auth = embedded.local_secret(embedded.FLOWER_AUTH_FILE)
    return dict(flower_basic_auth=flower_basic_auth)


def _read_jwt_verification(environ: Mapping[str, str]) -> dict:
    jwt_max_lifetime_seconds = _number(environ, "JWT_MAX_LIFETIME_SECONDS", DEFAULT_JWT_MAX_LIFETIME_SECONDS)
    if jwt_max_lifetime_seconds < 1:
        raise ConfigurationError("JWT_MAX_LIFETIME_SECONDS must be a positive number of seconds")
    jwt_public_key = environ.get("JWT_PUBLIC_KEY") or None
    jwt_jwks_url = environ.get("JWT_JWKS_URL") or None
    if jwt_public_key is not None and jwt_jwks_url is not None:
        raise ConfigurationError("Set JWT_PUBLIC_KEY or JWT_JWKS_URL, not both")
    if jwt_public_key is not None:
        try:
            jwt_keys.load_public_key(jwt_public_key)
        except ValueError as error:
            raise ConfigurationError(f"JWT_PUBLIC_KEY {error}") from None
    if jwt_jwks_url is not None:
        _check_jwks_url(jwt_jwks_url)
    return dict(
        jwt_audience=environ.get("JWT_AUDIENCE") or None,
        jwt_issuer=environ.get("JWT_ISSUER") or None,
        jwt_max_lifetime_seconds=jwt_max_lifetime_seconds,
        jwt_public_key=jwt_public_key,
        jwt_jwks_url=jwt_jwks_url,
    )


def _read_web(environ: Mapping[str, str]) -> dict:
    return dict(
        port=_number(environ, "PORT", 8000),
        host=environ.get("HOST") or "0.0.0.0",
        catalog_cache_seconds=_number(environ, "CATALOG_CACHE_SECONDS", 5.0, float),
        auth_cache_seconds=_number(environ, "AUTH_CACHE_SECONDS", 5.0, float),
        enqueue_timeout_seconds=_number(environ, "ENQUEUE_TIMEOUT_SECONDS", 3.0, float),
        accept_group_window_seconds=_number(environ, "ACCEPT_GROUP_WINDOW_SECONDS", 0.0, float),
    )


def _read_worker(environ: Mapping[str, str]) -> dict:
    return dict(worker_metrics_port=_number(environ, "WORKER_METRICS_PORT", 0) or None)


def _check_jwks_url(url: str) -> None:
    """https, or http to this machine's loopback interface only."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
        parsed.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise ConfigurationError(f"JWT_JWKS_URL is not a URL: {url!r}") from None
    if not host:
        raise ConfigurationError(f"JWT_JWKS_URL has no host: {url!r}")
    if parsed.scheme == "https" or (parsed.scheme == "http" and host in _LOOPBACK_HOSTS):
        return
    raise ConfigurationError(
        "JWT_JWKS_URL must be an https URL (plain http only to 127.0.0.1, ::1 or localhost), "
        f"got {url!r}"
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
