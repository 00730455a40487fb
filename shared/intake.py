"""The intake: accepted usage events waiting to be recorded, as a Redis stream.

Every reader and writer of the stream goes through this module:

- ``Intake.accept`` (the edge, and the operator's re-drive) runs one Lua script that
  does everything that makes an event accepted, atomically: refuse a revoked App
  Password (its mark, ``shared.revocation_marks``), claim the Idempotency-Key, append the
  event, write its queued copy, and say whether a recorder must be woken (the first
  event into an idle intake). All of it happens or none of it. Concurrent accepts of a
  process share one script call (a group commit): one round trip, and one fsync of the
  append-only file, for all of them, each event answered on its own.
- ``IntakeReader`` (the recorder) reads batches through a consumer group; ``done``
  acknowledges and deletes them, only after the rows they produced were committed, so a
  worker killed mid-batch loses nothing: another claims its entries after
  ``CLAIM_IDLE_MS``.
- ``waiting_entries`` and ``remove`` are what an operator uses to see the oldest
  entries and to set one aside (``worker.set_aside``).

A publish has a hard time bound and an honest outcome: ``QueueUnavailable`` when Redis
certainly did not take the events (nothing was accepted), ``OutcomeUnknown`` when the
script may have run but its reply never came (the caller is told so, with the ids).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from shared import redis_connection
from shared.config import RedisSentinel, Settings
from shared.revocation_marks import revocation_key
from shared.usage_event import AcceptedUsageEvent

STREAM = "billing:intake"
GROUP = "billing-recorders"
EVENT_FIELD = "event"
# An event's queued copy: its message, kept from its acceptance until its row is
# committed, so GET .../{id} can answer "queued" for an event no recorder has written yet.
QUEUED_KEY = "billing:queued:{event_id}"
QUEUED_TTL_SECONDS = 7 * 24 * 3600
# A claim covers a key's first 24 hours, while its event may still be in the intake;
# once recorded, the log row keeps the key for good (ingest_api.kept_keys).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# How long an entry may sit unacknowledged with a consumer before another may take it.
# A live recorder acknowledges a batch within a second or two; taking a slow one's entry
# only costs a second, idempotent, recording of it.
CLAIM_IDLE_MS = 5_000
# Set (NX) by the accept script when it appends to an intake no recorder is draining:
# the edge then sends one record task. The recorder chain keeps it set while it runs;
# a recorder killed mid-chain lets it lapse after this long, and the next event wakes
# a new one (the beat sweep covers an intake that gets no new event).
RECORDER_WANTED_KEY = "billing:recorder-wanted"
RECORDER_WANTED_MS = 10_000

_ACCEPT = """
-- KEYS: stream, recorder-wanted flag, then per call (one accept: a request's events):
--       the caller's App Password revocation mark ('' for a JWT), then per event: its
--       queued-copy key, its idempotency key ('' if none)
-- ARGV: queued ttl, idempotency ttl, recorder-wanted ttl (ms), then per call: its number
--       of events, then per event: id, message, body fingerprint
-- Returns 'wake' or '', then per call: 'revoked' if it was refused, else one result per
-- event ('queued', or the claim 'id fingerprint' of an earlier event with the same key).
-- The calls of a group are judged one after the other, as if each had run alone.
local replies, fresh, claims = {''}, {}, {}
local k, a = 3, 4
while a <= #ARGV do
  local count = tonumber(ARGV[a])
  local revoked = KEYS[k] ~= '' and redis.call('EXISTS', KEYS[k]) == 1
  local results = {}
  -- Redis does not undo a script's earlier writes when a later command fails. So first
  -- decide (reads only), then append every new event (XADD is the command that can fail,
  -- e.g. when the stream key holds another type), and only then write the queued copies
  -- and idempotency claims (SET cannot fail): a refused append leaves nothing behind.
  for i = 0, count - 1 do
    local queued_key, idem_key = KEYS[k + 1 + 2 * i], KEYS[k + 2 + 2 * i]
    local own_id = ARGV[a + 1 + 3 * i]
    local earlier = false
    if idem_key ~= '' then earlier = claims[idem_key] or redis.call('GET', idem_key) end
    if (earlier and string.sub(earlier, 1, #own_id + 1) == own_id .. ' ')
        or redis.call('EXISTS', queued_key) == 1 then
      -- This very event (its id is new per request) is queued already, or its key's claim
      -- is its own: an earlier attempt of this call ran, but its reply was lost. Checked
      -- before the revocation, so the answer to a retried call is the one the first
      -- attempt earned.
      results[#results + 1] = earlier or 'queued'
    elseif revoked then
      -- Refused atomically with the append, so revocation takes effect at once even for
      -- a caller the web process has cached; a replay of an earlier event's key too (its
      -- id and status are the caller's no more). Nothing of this call was taken: a
      -- revoked call reaches neither branch below.
      results = 'revoked'
      break
    elseif earlier then
      results[#results + 1] = earlier
    else
      local claim = own_id .. ' ' .. ARGV[a + 3 + 3 * i]
      if idem_key ~= '' then claims[idem_key] = claim end
      fresh[#fresh + 1] = {queued_key, idem_key, ARGV[a + 2 + 3 * i], claim}
      results[#results + 1] = 'queued'
    end
  end
  replies[#replies + 1] = results
  k, a = k + 1 + 2 * count, a + 1 + 3 * count
end
for _, event in ipairs(fresh) do
  redis.call('XADD', KEYS[1], '*', 'event', event[3])
end
for _, event in ipairs(fresh) do
  redis.call('SET', event[1], event[3], 'EX', ARGV[1])
  if event[2] ~= '' then redis.call('SET', event[2], event[4], 'EX', ARGV[2]) end
end
if #fresh > 0 and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then replies[1] = 'wake' end
return replies
"""
_ACCEPT_SHA = hashlib.sha1(_ACCEPT.encode()).hexdigest()

# Between attempts to reach Redis (a restart, a refused connection), within the bound.
_RETRY_PAUSES_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.3)
# How long a refused connection is retried before "nothing was accepted" (503).
REFUSED_RETRY_SECONDS = 0.5
# The most events one group's script call carries (a call is never split): Redis runs
# nothing else while a script runs, and 1,000 events take it a few milliseconds.
MAX_GROUP_EVENTS = 1_000


class QueueUnavailable(Exception):
    """Redis did not take the events: certainly nothing was accepted."""


class OutcomeUnknown(Exception):
    """The accept script was sent and may have run, but no reply came within the bound."""

    def __init__(self, event_ids: Sequence[uuid.UUID], *, not_replicated: bool = False):
        super().__init__(f"no {'replica acknowledgement' if not_replicated else 'reply'} from the queue for {len(event_ids)} event(s)")
        self.event_ids = list(event_ids)
        # The primary took them, but too few replicas confirmed it in time.
        self.not_replicated = not_replicated


class Revoked(Exception):
    """The caller's App Password was revoked; nothing was accepted."""


class _NotSent(Exception):
    """The command never fully reached Redis, so it cannot have run."""


class _NoReply(Exception):
    """The command was sent; Redis may have run it (``not_replicated``: it did, but too
    few replicas confirmed it)."""

    def __init__(self, not_replicated: bool = False):
        super().__init__()
        self.not_replicated = not_replicated


class _NotReplicated(Exception):
    """The primary ran the script, but fewer replicas than required confirmed it in time:
    a failover now could lose it. Asked again, the script recognises its own events."""


@dataclass(frozen=True)
class _Acknowledged:
    """The accept script's round trip: alone, or pipelined with ``WAIT replicas timeout``
    when replicas must confirm it, so that one round trip both runs it and learns how
    many replicas hold it."""

    replicas: int
    timeout_ms: int

    def send(self, connection, command: tuple) -> None:
        if not self.replicas:
            connection.send_command(*command)
            return
        connection.send_packed_command(connection.pack_commands([command, ("WAIT", self.replicas, self.timeout_ms)]))

    def read(self, connection, deadline: float):
        """The script's reply; raises ``_NotReplicated`` on a short count."""
        if not self.replicas:
            return connection.read_response()
        try:
            reply = connection.read_response()
        except redis.ResponseError as error:  # NOSCRIPT or a refusal: WAIT's reply still follows
            reply = error
        if not connection.can_read(timeout=max(0.0, deadline - time.monotonic())):
            raise redis.TimeoutError("no acknowledgement within the bound")
        confirmed = connection.read_response()
        if isinstance(reply, Exception):
            raise reply
        if confirmed < self.replicas:
            raise _NotReplicated(f"{confirmed} of {self.replicas} replicas confirmed")
        return reply


@dataclass(frozen=True)
class Acceptance:
    """``queued`` (new), ``duplicate`` (an earlier event, same body) or ``conflict`` (same key, other body)."""

    status: str
    event_id: uuid.UUID


@dataclass(frozen=True)
class Accepted:
    acceptances: list[Acceptance]
    wake_recorder: bool  # the intake was idle: the caller sends one record task


@dataclass(eq=False)
class _Call:
    """One accept's share of a group's script call, and the answer it gets."""

    keys: list[str]  # the revocation mark, then per event: queued copy, idempotency key
    args: list  # the number of events, then per event: id, message, fingerprint
    event_ids: list[uuid.UUID]
    deadline: float
    reply: list | str | Exception | None = None  # its results, 'revoked', or what to raise
    wake: bool = False  # this call's request sends the group's one record task


def fingerprint(canonical_body: bytes) -> str:
    return hashlib.sha256(canonical_body).hexdigest()


def idempotency_key_name(caller_user_id: uuid.UUID, key: str) -> str:
    # Hashed: the caller's key may hold anything printable, and its length is theirs to choose.
    return f"billing:idem:{caller_user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


class Intake:
    """The writer's side: accept events within ``timeout_seconds``, honestly.

    A group commit: an accept that finds no script call in flight sends its own at once;
    the ones that arrive meanwhile wait, and the first of them to get the turn sends one
    call for all that wait (up to ``MAX_GROUP_EVENTS``), after ``group_window_seconds``
    more for company. With ``appendfsync always`` each call costs Redis an fsync, which a
    call of one event pays alone.
    """

    def __init__(
        self, broker_url: str, timeout_seconds: float, *, group_window_seconds: float = 0.0,
        client: redis.Redis | None = None, sentinel: RedisSentinel | None = None, ack_replicas: int = 0,
        ack_timeout_ms: int = 0,
    ):
        """``client``: one to use instead of connecting to ``broker_url`` (a test's).
        ``sentinel``: find the primary through it. ``ack_replicas``: an accept counts
        only once that many replicas confirm it (``_Acknowledged``): one ``WAIT`` per
        group's call."""
        self._broker_url = broker_url
        self._sentinel = sentinel
        self._timeout_seconds = timeout_seconds
        self._group_window_seconds = group_window_seconds
        self._client = client
        self._client_pid = os.getpid() if client is not None else 0
        self._acknowledged = _Acknowledged(ack_replicas, ack_timeout_ms)
        self._waiting: list[_Call] = []  # not sent yet, oldest first
        self._sending = False  # an accept is sending a group's call
        self._changed = threading.Condition()  # guards both; notified when a call ends

    @classmethod
    def for_settings(cls, settings: Settings, timeout_seconds: float | None = None) -> Intake:
        return cls(
            settings.broker_url, settings.enqueue_timeout_seconds if timeout_seconds is None else timeout_seconds,
            group_window_seconds=settings.accept_group_window_seconds, sentinel=settings.redis_sentinel,
            ack_replicas=settings.redis_ack_replicas, ack_timeout_ms=settings.redis_ack_timeout_ms,
        )

    @property
    def redis(self) -> redis.Redis:
        """This process's client, on one dedicated connection opened at first use.

        One connection, not a pool: the pool's per-command bookkeeping (checkout, liveness
        poll, release) cost a measurable share of a request. Concurrent requests of a
        process take turns on it. The app is created before gunicorn forks its workers:
        each process opens its own connection, and never uses one inherited from its parent.
        """
        if self._client is None or self._client_pid != os.getpid():
            self._client_pid = os.getpid()
            self._client = redis_connection.connect(
                self._broker_url,
                self._sentinel,
                socket_timeout=self._timeout_seconds,
                socket_connect_timeout=min(self._timeout_seconds, 0.5),
                # No retries here, the handshake included: accept retries within its own
                # bounds (see _run_accept); the status reads answer 503 at once instead.
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                decode_responses=True,
                single_connection=True,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def accept(
        self, events: Sequence[tuple[AcceptedUsageEvent, str]], app_password_id: uuid.UUID | None = None
    ) -> Accepted:
        """Queue each (event, body fingerprint) unless its Idempotency-Key was seen.

        Raises ``Revoked`` if the caller's App Password was revoked and ``QueueUnavailable``
        if Redis did not take the events (in both cases nothing was accepted), and
        ``OutcomeUnknown`` if it may have: its reply was lost and Redis did not answer
        again within the bound.
        """
        return self._accept(events, app_password_id, claim_keys=True)

    def redrive(self, events: Sequence[AcceptedUsageEvent]) -> Accepted:
        """Append accepted events again (``usage retry`` of rejected ones), keeping their
        ids: the recorder writes each at most once. Their Idempotency-Keys were claimed
        when they were first accepted and are not looked at again."""
        return self._accept([(event, "") for event in events], None, claim_keys=False)

    def _accept(
        self, events: Sequence[tuple[AcceptedUsageEvent, str]], app_password_id: uuid.UUID | None, *, claim_keys: bool
    ) -> Accepted:
        keys = [revocation_key(app_password_id) if app_password_id else ""]
        args: list[str | int] = [len(events)]
        for event, body_fingerprint in events:
            keys.append(QUEUED_KEY.format(event_id=event.id))
            claimed = claim_keys and event.idempotency_key
            keys.append(idempotency_key_name(event.caller_user_id, event.idempotency_key) if claimed else "")
            args += [str(event.id), event.to_message(), body_fingerprint]
        call = _Call(keys, args, [event.id for event, _ in events], time.monotonic() + self._timeout_seconds)
        results = self._commit(call)
        if results == "revoked":
            raise Revoked()
        acceptances = []
        for (event, body_fingerprint), result in zip(events, results, strict=True):
            if result == "queued":
                acceptances.append(Acceptance("queued", event.id))
                continue
            earlier_id, earlier_fingerprint = result.split(" ")
            if earlier_id == str(event.id):
                # The key's claim is this event's own: an earlier attempt of this call ran
                # and its reply was lost. It is new to the caller.
                acceptances.append(Acceptance("queued", event.id))
            else:
                same = earlier_fingerprint == body_fingerprint
                acceptances.append(Acceptance("duplicate" if same else "conflict", uuid.UUID(earlier_id)))
        return Accepted(acceptances, wake_recorder=call.wake)

    def _commit(self, call: _Call) -> list | str:
        """The call's reply, from the group it was sent in (by this accept or another).

        Waiting calls sleep on one condition, woken together when a group's call ends:
        each finds its reply, or the first of the rest to wake sends the next group.
        (Waiting for the turn itself would not do: a call already answered would queue
        behind the next group's round trip just to learn it.)
        """
        while True:
            with self._changed:
                if call not in self._waiting and call.reply is None:
                    self._waiting.append(call)
                while self._sending and call.reply is None:
                    if call in self._waiting:
                        remaining = call.deadline - time.monotonic()
                        if remaining <= 0:  # never sent: certainly not accepted
                            self._waiting.remove(call)
                            raise QueueUnavailable("the queue did not take the events in time")
                        self._changed.wait(remaining)
                    else:
                        # In the group being sent, which is answered within its own bound
                        # (the earliest deadline of its calls).
                        self._changed.wait()
                if call.reply is not None:
                    break
                self._sending = True
            try:
                self._send_group()
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()
        if isinstance(call.reply, Exception):
            raise call.reply
        return call.reply

    def _send_group(self) -> None:
        """One script call for the calls waiting, oldest first; each gets its own reply."""
        if self._group_window_seconds > 0:
            time.sleep(self._group_window_seconds)
        group: list[_Call] = []
        with self._changed:
            events = 0
            while self._waiting and (not group or events + len(self._waiting[0].event_ids) <= MAX_GROUP_EVENTS):
                group.append(self._waiting.pop(0))
                events += len(group[-1].event_ids)
        keys = [STREAM, RECORDER_WANTED_KEY, *itertools.chain.from_iterable(call.keys for call in group)]
        args = [QUEUED_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS, RECORDER_WANTED_MS]
        args += itertools.chain.from_iterable(call.args for call in group)
        try:
            wake, *replies = self._run_accept(keys, args, min(call.deadline for call in group))
        except _NoReply as lost:
            # Each event of the group is answered "unknown", each request with its own ids.
            for call in group:
                call.reply = OutcomeUnknown(call.event_ids, not_replicated=lost.not_replicated)
            return
        except QueueUnavailable as error:
            for call in group:
                call.reply = QueueUnavailable(str(error))
            return
        except BaseException:
            # Whatever stopped this call (a bug, the greenlet killed), it may have been
            # sent: the others of the group cannot be told more than "unknown".
            for call in group:
                call.reply = OutcomeUnknown(call.event_ids)
            raise
        for call, reply in zip(group, replies, strict=True):
            call.reply = reply
        if wake == "wake":
            # The intake was idle: one request of the group (not a refused one) wakes a recorder.
            next(call for call in group if call.reply != "revoked").wake = True

    def _run_accept(self, keys: list[str], args: list, deadline: float) -> list:
        """The script's reply by ``deadline``, retrying on a fresh connection.

        A refused or broken connection that never carried the command is retried for
        ``REFUSED_RETRY_SECONDS`` (a restart costs a slower answer, not a 503), then
        answered "unavailable": nothing was accepted. Once a command was sent and its
        reply lost, the outcome is open, and Redis is asked again until the full bound
        (``_NoReply`` then): repeating the script is always safe (it recognises its own
        events, by their queued copies and claims), so the first answer Redis gives
        settles it.
        """
        started = time.monotonic()
        maybe_ran = not_replicated = False
        for pause in itertools.chain(_RETRY_PAUSES_SECONDS, itertools.repeat(_RETRY_PAUSES_SECONDS[-1])):
            try:
                return self._evalsha_once(keys, args, deadline)
            except _NotSent:
                pass
            except (_NoReply, _NotReplicated) as error:
                maybe_ran, not_replicated = True, isinstance(error, _NotReplicated)
            give_up_at = deadline if maybe_ran else min(deadline, started + REFUSED_RETRY_SECONDS)
            if time.monotonic() + pause >= give_up_at:
                break
            time.sleep(pause)
        if maybe_ran:
            raise _NoReply(not_replicated)
        raise QueueUnavailable("the queue did not take the events")

    def _evalsha_once(self, keys: list[str], args: list, deadline: float) -> list:
        command = ("EVALSHA", _ACCEPT_SHA, len(keys), *keys, *args)
        try:
            client = self.redis
        except redis.RedisError as error:  # could not even connect
            raise _NotSent() from error
        # Concurrent requests of this process share the connection: one command and its
        # reply at a time, and no longer than the bound allows.
        if not client.single_connection_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _NotSent()
        try:
            connection = client.connection
            try:
                # Sent whole or not at all as far as Redis is concerned: a command cut short
                # by a broken connection is never run.
                # Connected first, through connect(): send_command opens a closed connection
                # itself, but at its last address, where a Sentinel-managed one must ask the
                # Sentinels for the primary's address anew (after a failover, the old is dead).
                connection.connect()
                self._acknowledged.send(connection, command)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                connection.disconnect()
                raise _NotSent() from error
            try:
                if not connection.can_read(timeout=max(0.0, deadline - time.monotonic())):
                    raise redis.TimeoutError("no reply within the bound")
                return self._acknowledged.read(connection, deadline)
            except redis.exceptions.NoScriptError:
                no_script = True
            except redis.ResponseError as error:
                # Redis answered with a refusal (out of memory, a key of the wrong type, ...):
                # the script stopped before its first write, so nothing was accepted.
                raise QueueUnavailable(str(error)) from error
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                # The command left; its reply did not come. A late reply must never be
                # read as another command's: drop the connection.
                connection.disconnect()
                raise _NoReply() from error
        finally:
            client.single_connection_lock.release()
        if no_script:
            # A restarted (or flushed) Redis forgot the script. NOSCRIPT means it did not
            # run: load it and go again, within the same bound.
            try:
                client.script_load(_ACCEPT)
            except redis.RedisError as error:
                raise _NotSent() from error
        return self._evalsha_once(keys, args, deadline)

    def queued_event(self, event_id: uuid.UUID) -> AcceptedUsageEvent | None:
        """The event, from its queued copy, if it is accepted and no worker has recorded it yet."""
        try:
            message = self.redis.get(QUEUED_KEY.format(event_id=event_id))
        except redis.RedisError as error:
            raise QueueUnavailable(str(error)) from error
        return AcceptedUsageEvent.from_message(message) if message else None


# --- the reader's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id, and its message (None if the entry has no event field)."""

    entry_id: str
    message: str | None


def consumer_name() -> str:
    """This process's name in the consumer group: its pending entries are its own."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(broker: redis.Redis) -> None:
    try:
        # From "0": entries appended before the group existed are billed too.
        broker.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


class IntakeReader:
    """Reads one consumer's batches: first its own unacknowledged entries (a retry after
    a failed commit), then entries stranded by a dead consumer, then new ones."""

    def __init__(self, broker: redis.Redis, consumer: str | None = None):
        self.broker = broker
        self.consumer = consumer or consumer_name()

    def next_batch(self, count: int) -> list[Entry]:
        ensure_group(self.broker)
        entries = self._read("0", count)
        if not entries:
            _, claimed, *_ = self.broker.xautoclaim(STREAM, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=count)
            entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not entries:
            entries = self._read(">", count)
        return [Entry(entry_id, fields.get(EVENT_FIELD)) for entry_id, fields in entries]

    def _read(self, start: str, count: int) -> list[tuple[str, dict]]:
        response = self.broker.xreadgroup(GROUP, self.consumer, {STREAM: start}, count=count)
        if not response:
            return []
        _, entries = response[0]
        stale = [entry_id for entry_id, fields in entries if not fields]  # deleted after an ack elsewhere
        if stale:
            self.broker.xack(STREAM, GROUP, *stale)
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def acknowledge(self, entries: Sequence[Entry], event_ids: Sequence[uuid.UUID]) -> None:
        """Acknowledge committed entries, drop them from the stream, delete their queued copies."""
        remove(self.broker, [entry.entry_id for entry in entries], event_ids)

    def keep_awake(self) -> None:
        """This recorder chain is draining: no new event needs to wake another."""
        self.broker.set(RECORDER_WANTED_KEY, 1, px=RECORDER_WANTED_MS)

    def go_to_sleep(self) -> bool:
        """Stand down; True if unread entries arrived meanwhile and this recorder must go on.

        The flag is cleared first, then the stream looked at: an entry appended before the
        clear is seen here; one appended after it sets the flag anew and wakes a recorder.
        Entries a dead consumer holds are not "unread": they wait for ``CLAIM_IDLE_MS``,
        then the next recorder (woken by a new event, or the beat sweep) claims them.
        """
        self.broker.delete(RECORDER_WANTED_KEY)
        return unread(self.broker) > 0 and bool(
            self.broker.set(RECORDER_WANTED_KEY, 1, nx=True, px=RECORDER_WANTED_MS)
        )


def unread(broker: redis.Redis) -> int:
    """Entries appended that no recorder has read yet."""
    ensure_group(broker)
    with broker.pipeline(transaction=False) as pipe:
        pipe.xlen(STREAM)
        pipe.xpending(STREAM, GROUP)
        length, pending = pipe.execute()
    return length - pending["pending"]


def recorder_needed(broker: redis.Redis) -> bool:
    """Entries wait that no recorder is draining (the beat sweep asks): unread ones while
    no recorder is wanted (a lost wake-up; the flag is taken here), or ones a dead
    consumer has held for longer than ``CLAIM_IDLE_MS``."""
    if unread(broker) > 0 and broker.set(RECORDER_WANTED_KEY, 1, nx=True, px=RECORDER_WANTED_MS):
        return True
    return bool(broker.xpending_range(STREAM, GROUP, min="-", max="+", count=1, idle=CLAIM_IDLE_MS))


def remove(broker: redis.Redis, entry_ids: Sequence[str], event_ids: Sequence[uuid.UUID] = ()) -> None:
    """Acknowledge and delete entries, and the queued copies of their events."""
    if not entry_ids:
        return
    with broker.pipeline(transaction=True) as pipe:
        pipe.xack(STREAM, GROUP, *entry_ids)
        pipe.xdel(STREAM, *entry_ids)
        if event_ids:
            pipe.delete(*(QUEUED_KEY.format(event_id=event_id) for event_id in event_ids))
        pipe.execute()


@dataclass(frozen=True)
class WaitingEntry:
    """An entry as an operator sees it: how long it has waited, how often it was read."""

    entry_id: str
    age_seconds: float
    deliveries: int  # 0: never read yet
    consumer: str | None
    message: str | None


def entry_time(entry_id: str) -> float:
    """When an entry was appended (Unix seconds): the first part of its id."""
    return int(entry_id.split("-")[0]) / 1000


def waiting_entries(broker: redis.Redis, limit: int) -> list[WaitingEntry]:
    """The oldest ``limit`` entries, with their age and how often they were delivered."""
    ensure_group(broker)
    entries = broker.xrange(STREAM, count=limit)
    if not entries:
        return []
    pending = {
        item["message_id"]: item
        for item in broker.xpending_range(STREAM, GROUP, min=entries[0][0], max=entries[-1][0], count=limit)
    }
    now = time.time()
    return [
        WaitingEntry(
            entry_id=entry_id,
            age_seconds=max(0.0, now - entry_time(entry_id)),
            deliveries=pending.get(entry_id, {}).get("times_delivered", 0),
            consumer=pending.get(entry_id, {}).get("consumer"),
            message=fields.get(EVENT_FIELD),
        )
        for entry_id, fields in entries
    ]


def entry(broker: redis.Redis, entry_id: str) -> Entry | None:
    found = broker.xrange(STREAM, min=entry_id, max=entry_id)
    return Entry(found[0][0], found[0][1].get(EVENT_FIELD)) if found else None


def events_appended_before(broker: redis.Redis, appended_before: float, limit: int) -> list[AcceptedUsageEvent]:
    """The events of the oldest ``limit`` entries appended before ``appended_before``
    (Unix seconds). An entry that is not an event is left out (``intake set-aside`` is
    for it)."""
    events = []
    for _, fields in broker.xrange(STREAM, max=str(int(appended_before * 1000)), count=limit):
        # Read with or without decode_responses (the metrics' client reads bytes).
        message = fields.get(EVENT_FIELD, fields.get(EVENT_FIELD.encode()))
        try:
            events.append(AcceptedUsageEvent.from_message(message))
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            continue
    return events
