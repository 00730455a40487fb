"""The base class of every pipeline task, and the per-process resources it hands them:
the settings, database transactions, the broker client and the Stripe meter reporter."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import celery
import redis
from sqlalchemy import orm

from shared import db, redis_connection
from shared.config import RedisSentinel, Settings, get_settings


def broker_client(broker_url: str, sentinel: RedisSentinel | None = None) -> redis.Redis:
    """The pipeline's Redis client. Text that is not UTF-8 (only a hand-made stream entry
    could hold such) is read escaped, so that the recorder keeps it aside as unreadable
    instead of failing on it batch after batch."""
    return redis_connection.connect(
        broker_url, sentinel, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10,
        decode_responses=True, encoding_errors="backslashreplace",
    )


@dataclasses.dataclass(frozen=True)
class ProcessResources:
    """What the tasks of one pool process share: built in the process that uses them
    (``pid``), never inherited across a fork."""

    pid: int
    broker: redis.Redis
    meter: object  # worker.stripe_reporting.StripeMeter, imported when first built

    @classmethod
    def build(cls, settings: Settings) -> ProcessResources:
        from worker.stripe_reporting import StripeMeter

        return cls(
            pid=os.getpid(),
            broker=broker_client(settings.broker_url, settings.redis_sentinel),
            meter=StripeMeter(settings, api=settings.stripe_meter_api),
        )


class BillingTask(celery.Task):
    """The base of every pipeline task: its settings, database transactions, the broker
    and Stripe come from here, one of each per worker process."""

    # A result names the events its task recorded or reported, so that searching an
    # event id in Flower finds them: up to 2,000 ids (about 80 kB), far above Celery's
    # default 1,024 characters of a result's repr.
    resultrepr_maxsize = 128 * 1024
    _per_process: ProcessResources | None = None

    @property
    def settings(self) -> Settings:
        return get_settings()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[orm.Session]:
        """A session in one transaction: committed when the block ends, else rolled back."""
        with db.transaction(self.settings.database_url) as session:
            yield session

    @property
    def broker(self) -> redis.Redis:
        return self._resources().broker

    @property
    def meter(self):
        """The Stripe meter reporter (``worker.stripe_reporting.StripeMeter``)."""
        return self._resources().meter

    def _resources(self) -> ProcessResources:
        resources = BillingTask._per_process
        if resources is None or resources.pid != os.getpid():
            resources = BillingTask._per_process = ProcessResources.build(self.settings)
        return resources
