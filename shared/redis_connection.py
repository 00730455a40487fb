"""How every process reaches the Redis primary: one URL, or through Sentinel.

With ``REDIS_SENTINELS`` set (``shared.config.RedisSentinel``) a client asks the
Sentinels for the primary's address each time it opens a connection, and a connection
to a server that has become a replica fails (redis-py turns its READONLY into a
connection error) and is opened again to the new primary: a failover costs each client
one broken connection, never a restart. Celery reaches the same primary through kombu's
``sentinel://`` transport (``celeryconfig``); everything else comes here.

Also here: what ``/readyz`` and ``/metrics`` report of the replication
(``replication_state``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from shared.config import RedisSentinel, Settings

# A Sentinel that does not answer this fast is skipped for the next one: asking it is
# part of opening every connection.
SENTINEL_TIMEOUT_SECONDS = 0.5


def connect(broker_url: str, sentinel: RedisSentinel | None, *, single_connection: bool = False, **options) -> redis.Redis:
    """A client of the primary: of ``broker_url`` when ``sentinel`` is None, else of the
    primary the Sentinels name. ``options`` are redis-py's connection options."""
    if sentinel is None:
        return redis.Redis.from_url(broker_url, single_connection_client=single_connection, **options)
    pool = SentinelConnectionPool(sentinel.master_name, sentinels(sentinel), password=sentinel.password, **options)
    return redis.Redis(connection_pool=pool, single_connection_client=single_connection)


def for_settings(settings: Settings, **options) -> redis.Redis:
    return connect(settings.broker_url, settings.redis_sentinel, **options)


def sentinels(sentinel: RedisSentinel) -> Sentinel:
    timeout = dict(socket_timeout=SENTINEL_TIMEOUT_SECONDS, socket_connect_timeout=SENTINEL_TIMEOUT_SECONDS)
    return Sentinel(
        list(sentinel.addresses),
        sentinel_kwargs=dict(password=sentinel.sentinel_password, **timeout),
        password=sentinel.password,
        **timeout,
    )


def celery_transport_options(settings: Settings) -> dict:
    """What kombu's ``sentinel://`` transport needs besides the URL."""
    if settings.redis_sentinel is None:
        return {}
    options = {"master_name": settings.redis_sentinel.master_name}
    if settings.redis_sentinel.sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.redis_sentinel.sentinel_password}
    return options


@dataclass(frozen=True)
class Replication:
    """The primary's view of its replicas (``INFO replication``)."""

    primary: str  # host:port
    replicas: int  # connected ones
    lag_bytes: int | None  # the farthest replica's distance behind, None without replicas


def replication_state(client: redis.Redis) -> Replication:
    info = client.info("replication")
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()
    else:
        host, port = pool.connection_kwargs.get("host", "localhost"), pool.connection_kwargs.get("port", 6379)
    primary = f"{host}:{port}"
    offset = int(info.get("master_repl_offset", 0))
    lags = [
        offset - int(value["offset"])
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and "offset" in value
    ]
    return Replication(primary=primary, replicas=int(info.get("connected_slaves", 0)), lag_bytes=max(lags) if lags else None)
