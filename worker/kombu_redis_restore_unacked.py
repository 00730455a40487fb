"""A patch of kombu's Redis transport: ``kombu.transport.redis.QoS.restore_unacked``, and
its ``ack`` and ``reject``.

Why: kombu (5.7) puts a closing Redis channel's unacknowledged messages back through the
channel's transport. After the broker drops the connection (a Redis restart), the
consumer closes the channel when that transport is already let go
(``channel.connection.client`` is None), and the AttributeError that follows, raised in
``Channel._connparams`` reading ``conninfo.hostname``, ends the worker ("Unrecoverable
error: 'NoneType' object has no attribute 'hostname'"; 4 of 7 Redis restarts in a test).

What it changes: only that case. When ``restore_unacked`` is called without a client and
the channel's transport has no connection any more, it logs a warning and restores
nothing; in every other case kombu's own method runs unchanged. The messages are safe
meanwhile: Redis keeps them in its unacked set and hands them out again after the
visibility timeout (celeryconfig), and the sweep wakes whatever they were to wake. So the
worker lets the restore go and lives on to reconnect.

Upstream: no open report of this exact path in kombu 5 was found. The same AttributeError
through ``_connparams`` on a channel closing after its connection was gone is
celery/kombu#582 ("Error on restarting Gossip", kombu 3.0, closed), and
``restore_unacked`` failing in ``conn_or_acquire`` on a released connection at shutdown
is celery/kombu#970 (kombu 4.2.2, closed). Drop this module when kombu's own
``restore_unacked`` survives a Redis restart (tests/client/test_exactly_once_under_faults.py
restarts Redis under a worker).

Applied once, explicitly, where the Celery app is built (``worker.celery_app``).
"""

from __future__ import annotations

import functools
import logging

import kombu.transport.redis

log = logging.getLogger(__name__)


def _restore_unacked_unless_gone(restore_unacked):
    @functools.wraps(restore_unacked)
    def restore(qos, client=None):
        if client is None and getattr(getattr(qos.channel, "connection", None), "client", None) is None:
            log.warning("broker connection gone: unacknowledged messages stay in Redis for later")
            return None
        return restore_unacked(qos, client)

    restore.unless_gone = True
    return restore


def _unless_gone(settle):
    """``QoS.ack``/``QoS.reject`` of a message whose channel's transport is let go: the
    same AttributeError, from a task that ended after its connection was lost (a Redis
    failover). The message stays in the unacked set, handed out again after the
    visibility timeout; the task's own work is idempotent (rows by event id)."""

    @functools.wraps(settle)
    def settled(qos, delivery_tag, *args, **kwargs):
        if getattr(getattr(qos.channel, "connection", None), "client", None) is None:
            log.warning("broker connection gone: the message stays unacknowledged in Redis for later")
            return None
        return settle(qos, delivery_tag, *args, **kwargs)

    settled.unless_gone = True
    return settled


def apply() -> None:
    """Wrap kombu's methods; applying twice wraps each once."""
    qos = kombu.transport.redis.QoS
    if not getattr(qos.restore_unacked, "unless_gone", False):
        qos.restore_unacked = _restore_unacked_unless_gone(qos.restore_unacked)
    for name in ("ack", "reject"):
        if not getattr(getattr(qos, name), "unless_gone", False):
            setattr(qos, name, _unless_gone(getattr(qos, name)))
