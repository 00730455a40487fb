"""The kombu patch (``worker.kombu_redis_restore_unacked``): a channel whose transport was
let go (the broker's connection lost, a Redis failover) neither restores nor settles its
messages, and does not end the worker; any other channel runs kombu's own code."""

from __future__ import annotations

from types import SimpleNamespace

import kombu.transport.redis
import pytest

from worker import kombu_redis_restore_unacked

QoS = kombu.transport.redis.QoS


def a_qos(client):
    return SimpleNamespace(channel=SimpleNamespace(connection=SimpleNamespace(client=client)))


@pytest.mark.parametrize("settle", ["ack", "reject"])
def test_a_message_of_a_channel_whose_transport_is_gone_stays_unacknowledged(settle, caplog):
    kombu_redis_restore_unacked.apply()
    assert getattr(QoS, settle)(a_qos(client=None), "tag-1") is None
    assert "stays unacknowledged" in caplog.text


def test_a_live_channel_runs_kombus_own_code():
    kombu_redis_restore_unacked.apply()
    kombu_redis_restore_unacked.apply()  # applied twice: wrapped once
    assert getattr(QoS.ack.__wrapped__, "unless_gone", False) is False
    with pytest.raises(AttributeError, match="_remove_from_indices"):
        QoS.ack(a_qos(client=object()), "tag-1")  # kombu's ack, on a stand-in without its parts
