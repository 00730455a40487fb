"""Publishing accepted events to the intake stream (see ``shared.intake``).

One Lua script per request does everything that makes an event accepted, atomically:
claim the Idempotency-Key, append the event to the stream, and write its "queued" status
record. Either all of it happened or none of it did, so a key is never left claimed for
an event that was not queued. The publish has a hard time bound: a broker that refuses,
hangs or is gone raises ``BrokerUnavailable`` within ``ENQUEUE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import intake
from shared.usage_event import AcceptedUsageEvent

# Stripe keeps idempotency keys for 24 hours; callers know that window, we use the same.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600

_ACCEPT = """
-- KEYS: stream, the caller's App Password revocation mark ('' for a JWT), then per
--       event: its queued-status key, its idempotency key ('' if none)
-- ARGV: queued ttl, idempotency ttl, then per event: id, message, body fingerprint
-- A revoked App Password is refused here, atomically with the append, so revocation
-- takes effect at once even for a caller the web process has cached.
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return {'revoked'} end
-- Redis does not undo a script's earlier writes when a later command fails. So first
-- decide (reads only), then append every new event (XADD is the command that can fail,
-- e.g. when the stream key holds another type), and only then write the status records
-- and idempotency claims (SET cannot fail): a refused append leaves nothing behind.
local results, fresh, claims = {}, {}, {}
for i = 0, (#KEYS - 2) / 2 - 1 do
  local queued_key, idem_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local earlier = false
  if idem_key ~= '' then earlier = claims[idem_key] or redis.call('GET', idem_key) end
  if earlier then
    results[#results + 1] = earlier
  elseif redis.call('EXISTS', queued_key) == 1 then
    -- This very event (its id is new per request) is queued already: an earlier attempt
    -- of this call ran, but its reply was lost (e.g. Redis stopped before answering).
    results[#results + 1] = 'queued'
  else
    if idem_key ~= '' then claims[idem_key] = ARGV[3 + 3 * i] .. ' ' .. ARGV[5 + 3 * i] end
    fresh[#fresh + 1] = i
    results[#results + 1] = 'queued'
  end
end
for _, i in ipairs(fresh) do
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[4 + 3 * i])
end
for _, i in ipairs(fresh) do
  local queued_key, idem_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  redis.call('SET', queued_key, ARGV[4 + 3 * i], 'EX', ARGV[1])
  if idem_key ~= '' then redis.call('SET', idem_key, claims[idem_key], 'EX', ARGV[2]) end
end
return results
"""


# 0.02 + 0.04 + 0.08 + 0.16 + 0.2 s: about half a second of reconnecting, in all.
_RECONNECT_ATTEMPTS = 5
_RECONNECT_BACKOFF_BASE_SECONDS = 0.01
_RECONNECT_BACKOFF_CAP_SECONDS = 0.2


class BrokerUnavailable(Exception):
    """The event could not be queued; nothing was accepted."""


class Revoked(Exception):
    """The caller's App Password was revoked; nothing was accepted."""


def revocation_key(app_password_id: uuid.UUID) -> str:
    return f"billing:revoked-app-password:{app_password_id}"


# A revocation mark must outlive every web process's cached copy of the caller; after
# that the database (revoked_at) refuses it anyway.
REVOCATION_MARK_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Outcome:
    """``queued`` (new), ``duplicate`` (an earlier event, same body) or ``conflict`` (same key, other body)."""

    status: str
    event_id: uuid.UUID


def fingerprint(canonical_body: bytes) -> str:
    return hashlib.sha256(canonical_body).hexdigest()


def idempotency_key_name(caller_user_id: uuid.UUID, key: str) -> str:
    # Hashed: the caller's key may hold anything printable, and its length is theirs to choose.
    return f"billing:idem:{caller_user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


class Intake:
    def __init__(self, broker_url: str, timeout_seconds: float):
        self._broker_url = broker_url
        self._timeout_seconds = timeout_seconds
        self._client: redis.Redis | None = None
        self._client_pid = 0
        self._accept_sha = hashlib.sha1(_ACCEPT.encode()).hexdigest()

    @property
    def redis(self) -> redis.Redis:
        """This process's client, on one dedicated connection opened at first use.

        One connection, not a pool: a sync web worker runs one request at a time, and
        the pool's per-command bookkeeping (checkout, liveness poll, release) cost a
        measurable share of a request. Threads (the dev server, tests) take turns on it.
        gunicorn creates the app before it forks its workers: each process opens its own
        connection, and never uses (or closes) one inherited from its parent.
        """
        if self._client is None or self._client_pid != os.getpid():
            self._client_pid = os.getpid()
            self._client = redis.Redis.from_url(
                self._broker_url,
                socket_timeout=self._timeout_seconds,
                socket_connect_timeout=self._timeout_seconds,
                # A broken or refused connection (Redis restarting) is retried for about half
                # a second, so a short restart costs a slower answer, not a 503. Retrying is
                # safe even when the script ran and only its reply was lost: the script
                # recognises its own event (see _ACCEPT). Never on a timeout, which keeps
                # the time bound; a timed-out connection is closed, so no late reply is
                # read as another command's.
                retry=Retry(
                    ExponentialBackoff(cap=_RECONNECT_BACKOFF_CAP_SECONDS, base=_RECONNECT_BACKOFF_BASE_SECONDS),
                    _RECONNECT_ATTEMPTS,
                    supported_errors=(redis.ConnectionError,),
                ),
                decode_responses=True,
                single_connection_client=True,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def accept(
        self, events: list[tuple[AcceptedUsageEvent, str]], app_password_id: uuid.UUID | None = None
    ) -> list[Outcome]:
        """Queue each (event, body fingerprint) unless its Idempotency-Key was seen.

        Raises ``Revoked`` if the caller's App Password was revoked, ``BrokerUnavailable``
        if Redis cannot take the events in time; in both cases nothing was accepted.
        """
        keys = [intake.STREAM, revocation_key(app_password_id) if app_password_id else ""]
        args: list[str | int] = [intake.QUEUED_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS]
        for event, body_fingerprint in events:
            keys.append(intake.QUEUED_KEY.format(event_id=event.id))
            keys.append(
                idempotency_key_name(event.caller_user_id, event.idempotency_key) if event.idempotency_key else ""
            )
            args += [str(event.id), event.to_message(), body_fingerprint]
        try:
            results = self._run_accept(keys, args)
        except redis.RedisError as error:
            raise BrokerUnavailable(str(error)) from error
        if results == ["revoked"]:
            raise Revoked()
        outcomes = []
        for (event, body_fingerprint), result in zip(events, results, strict=True):
            if result == "queued":
                outcomes.append(Outcome("queued", event.id))
            else:
                earlier_id, earlier_fingerprint = result.split(" ")
                if earlier_id == str(event.id):
                    # The key's claim is this event's own: an earlier attempt of this call
                    # ran and its reply was lost. It is new to the caller.
                    outcomes.append(Outcome("queued", event.id))
                    continue
                same = earlier_fingerprint == body_fingerprint
                outcomes.append(Outcome("duplicate" if same else "conflict", uuid.UUID(earlier_id)))
        return outcomes

    def _run_accept(self, keys: list[str], args: list) -> list:
        # EVALSHA directly: redis-py's Script wrapper costs a measurable share of a request.
        client = self.redis
        try:
            return client.execute_command("EVALSHA", self._accept_sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # A restarted (or flushed) Redis forgot the script: load it, run it once more.
            # NOSCRIPT means it did not run, so this cannot accept anything twice.
            client.script_load(_ACCEPT)
            return client.execute_command("EVALSHA", self._accept_sha, len(keys), *keys, *args)

    def mark_revoked(self, app_password_id: uuid.UUID) -> None:
        try:
            self.redis.set(revocation_key(app_password_id), 1, ex=REVOCATION_MARK_SECONDS)
        except redis.RedisError as error:
            raise BrokerUnavailable(str(error)) from error

    def is_revoked(self, app_password_id: uuid.UUID) -> bool:
        try:
            return bool(self.redis.exists(revocation_key(app_password_id)))
        except redis.RedisError as error:
            raise BrokerUnavailable(str(error)) from error

    def queued_event(self, event_id: uuid.UUID) -> AcceptedUsageEvent | None:
        """The event if it is accepted and no worker has recorded it yet."""
        try:
            message = self.redis.get(intake.QUEUED_KEY.format(event_id=event_id))
        except redis.RedisError as error:
            raise BrokerUnavailable(str(error)) from error
        return AcceptedUsageEvent.from_message(message) if message else None
