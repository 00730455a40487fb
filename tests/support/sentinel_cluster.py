"""The production Redis layout on 127.0.0.1 ports, for a test of its own: a primary,
replicas and three Sentinels (``shared.embedded.start_redis`` / ``start_sentinel``),
which the test may kill -9 and whose promotions it can watch."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import redis

from devtools.children import wait_until
from shared import embedded
from shared.config import RedisSentinel, sentinel_broker_url

MASTER_NAME = "agent700-test"
SENTINELS = 3


class SentinelCluster:
    def __init__(self, directory: Path, *, replicas: int = 2, down_after_ms: int = 1000):
        self.directory = directory
        self.replicas = replicas
        self.down_after_ms = down_after_ms
        self.redis_ports = [embedded.free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [embedded.free_port() for _ in range(SENTINELS)]

    @property
    def sentinel(self) -> RedisSentinel:
        return RedisSentinel(addresses=tuple(("127.0.0.1", port) for port in self.sentinel_ports), master_name=MASTER_NAME)

    def env(self, ack_replicas: int) -> dict[str, str | None]:
        """A service process's environment for this layout (``service_env``'s extra_env)."""
        return {
            "CELERY_BROKER_URL": None,
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_ACK_REPLICAS": str(ack_replicas),
        }

    def settings_for(self, settings, ack_replicas: int):
        return settings.replace(
            broker_url=sentinel_broker_url(self.sentinel), redis_sentinel=self.sentinel, redis_ack_replicas=ack_replicas,
        )

    def start(self) -> SentinelCluster:
        primary, *replicas = self.redis_ports
        embedded.start_redis(self._redis_dir(primary), primary)
        for port in replicas:
            embedded.start_redis(self._redis_dir(port), port, replica_of=primary)
        wait_until(lambda: self._client(primary).info("replication")["connected_slaves"] == self.replicas, 60,
                   interval=0.05, message="the replicas did not connect")
        for port in self.sentinel_ports:
            embedded.start_sentinel(self.directory / f"sentinel-{port}", port, primary, MASTER_NAME, down_after_ms=self.down_after_ms)
        wait_until(lambda: all(self._knows_everyone(port) for port in self.sentinel_ports), 60, interval=0.1,
                   message="the Sentinels did not find each other and the replicas")
        return self

    def primary_port(self) -> int:
        """The primary a Sentinel names now."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                _, primary = self._client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(primary)
        raise RuntimeError("no Sentinel answers")

    def kill_9(self, port: int) -> None:
        os.kill(self._pid(port), signal.SIGKILL)

    def stop(self) -> None:
        for port in self.redis_ports:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                os.kill(self._pid(port), signal.SIGKILL)
        for port in self.sentinel_ports:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                os.kill(int((self.directory / f"sentinel-{port}" / "sentinel.pid").read_text()), signal.SIGKILL)

    def _knows_everyone(self, port: int) -> bool:
        master = self._client(port).sentinel_master(MASTER_NAME)
        return master["num-other-sentinels"] == SENTINELS - 1 and master["num-slaves"] == self.replicas

    def _redis_dir(self, port: int) -> Path:
        return self.directory / f"redis-{port}"

    def _pid(self, port: int) -> int:
        return int((self._redis_dir(port) / "redis.pid").read_text())

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
