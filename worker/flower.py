"""Start Flower behind basic auth, showing the billing pipeline's backlog in events.

``FLOWER_BASIC_AUTH`` is ``user:password`` (or several, comma-separated, as Flower takes
them); every entry needs a user and a password: an empty password is no protection.
Flower refuses to start without it.

What this launcher adds to Flower as it is:

- its Broker page and ``/api/queues/length`` list, beside the Celery queue ``billing``,
  the backlog in events: ``billing:intake`` (accepted, not yet recorded; a Redis stream
  Flower cannot count by itself) and ``billing:unreported`` (recorded, not yet reported;
  rows in PostgreSQL). Both are read when the page is, with no worker running;
- Flower keeps the last ``FLOWER_MAX_TASKS`` tasks (default here 10,000): a task's result
  names up to 2,000 event ids, so Flower's own default of 100,000 could hold gigabytes;
- Flower's own ``/metrics`` and ``/healthcheck`` want the basic auth too: Flower routes
  them to handlers without it, and its metrics name every worker and count its tasks;
- Flower's own Prometheus metrics stay in its process: they never leak into the
  service's ``/metrics``.

Flower's other options pass through (``--port 5555`` or ``FLOWER_PORT``, ``--address`` or
``FLOWER_ADDRESS``, ...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from shared.config import Settings, get_settings

USAGE = "FLOWER_BASIC_AUTH must be set to user:password; Flower does not start without it."
DEFAULT_MAX_TASKS = "10000"
log = logging.getLogger(__name__)


def usable_basic_auth(value: str | None) -> bool:
    """True if every comma-separated entry is ``user:password`` with both non-empty."""
    if not value:
        return False
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not (colon and user.strip() and password):
            return False
    return True


def tornado_argv(argv: list[str]) -> list[str]:
    """Flower parses its options with tornado, which takes only ``--name=value``:
    ``--port 5555`` (the usual command-line form) becomes ``--port=5555``. A bare flag
    (``--debug``) stays as it is."""
    result: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith("--") and "=" not in arg and following is not None and not following.startswith("--"):
            result.append(f"{arg}={following}")
            index += 2
        else:
            result.append(arg)
            index += 1
    return result


def backlog_queues(settings: Settings) -> list[dict]:
    """The backlog rows of the Broker page; a count its source did not give is None."""
    import redis

    from shared import backlog, db, redis_connection

    counts: dict[str, int | None] = {backlog.ACCEPTED_NOT_RECORDED: None, backlog.RECORDED_NOT_REPORTED: None}
    try:
        with redis_connection.for_settings(settings, socket_timeout=2, socket_connect_timeout=2) as broker:
            counts[backlog.ACCEPTED_NOT_RECORDED] = backlog.accepted_not_recorded(broker)
    except redis.RedisError as error:
        log.warning("backlog: the broker did not answer: %s", error)
    try:
        with db.engine_for(settings.database_url).connect() as connection:
            counts[backlog.RECORDED_NOT_REPORTED] = backlog.recorded_not_reported(connection)
    except Exception as error:  # noqa: BLE001 - any database failure leaves the count unknown
        log.warning("backlog: the database did not answer: %s", error)
    return [{"name": name, "messages": count} for name, count in counts.items()]


class _BacklogBroker:
    """Flower's broker client, with the pipeline's backlog appended to its queues."""

    def __init__(self, inner, settings: Settings):
        self._inner = inner
        self._settings = settings

    async def queues(self, names):
        queues = await self._inner.queues(names)
        return list(queues) + await asyncio.to_thread(backlog_queues, self._settings)


def _show_backlog(settings: Settings) -> None:
    # Flower builds its broker client in one place (BaseHandler.get_broker, for the Broker
    # page and /api/queues/length) from the name ``Broker`` in its views module.
    import flower.views

    flower_broker = flower.views.Broker
    flower.views.Broker = lambda *args, **kwargs: _BacklogBroker(flower_broker(*args, **kwargs), settings)


def _guard_metrics_and_healthcheck() -> None:
    # Every other Flower page and API handler carries tornado's @authenticated, which makes
    # BaseHandler.get_current_user check the basic auth; these two lack it.
    from flower.views import monitor
    from tornado.web import authenticated

    for handler in (monitor.Metrics, monitor.Healthcheck):
        handler.get = authenticated(handler.get)


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    if not usable_basic_auth(settings.flower_basic_auth):
        sys.exit(USAGE)
    # The credential goes through the environment, not argv, so `ps` does not show it.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    os.environ.setdefault("FLOWER_MAX_TASKS", DEFAULT_MAX_TASKS)
    # Flower's metrics are its own; in the service's multiprocess directory they would be
    # summed into the web's /metrics.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    _show_backlog(settings)
    _guard_metrics_and_healthcheck()
    from shared.queue import celery_app

    sys.exit(celery_app.start(["flower", *tornado_argv(argv if argv is not None else sys.argv[1:])]) or 0)


if __name__ == "__main__":
    main()
