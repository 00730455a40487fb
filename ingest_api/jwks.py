"""The signing keys a JWKS endpoint publishes (``JWT_JWKS_URL``), by ``kid``, each pinned
to the one algorithm its type allows (``shared.jwt_keys``).

The request path does no network call while the token's key is known: a dict lookup and
a clock read. Fetches run in a thread of their own, one started at most every
``refetch_seconds`` and shared by every request waiting for it, so an endpoint that is down or slow costs a request at most
``timeout_seconds`` of waiting, however many requests arrive together:

- key known, set younger than ``fresh_seconds``: used.
- key known, set older: used, and a refetch starts in the background (a request never
  waits for a key it already has). While the endpoint cannot be reached, the last keys
  fetched keep verifying for up to ``stale_seconds``, then ``SigningKeysUnavailable``.
- key not known: the set is refetched (a rotation may have just published it) and the
  request waits for that fetch. A set fetched successfully that lacks the key:
  ``UnknownSigningKey`` (401). No set, a failed fetch or one still running after
  ``timeout_seconds``: ``SigningKeysUnavailable`` (503; a retry may succeed).

A request joins the fetch in flight only while that fetch is younger than
``timeout_seconds``. One older has outlived the wait of every request that joined it (an
endpoint that hung, or trickles bytes); once ``refetch_seconds`` have passed since it
started, the next request starts a fresh fetch instead, so the first request after the
endpoint recovers is answered. The overdue fetch is left to end by itself; whatever it
brings back later never replaces what a fetch started after it found. At most
``MAX_FETCHES_AT_ONCE`` run at a time, and one more a minute (``GIVE_UP_SECONDS``) past
that, so an endpoint that trickles bytes for ever cannot pile up threads.

PyJWT's ``PyJWKClient`` does the fetching and parsing (no redirects; http and https
only); its own caches are off, because they fetch under a lock in the request that
found them stale, so requests queue behind a slow endpoint one timeout after another.
"""

from __future__ import annotations

import logging
import threading
import time

import jwt

from shared import jwt_keys

log = logging.getLogger(__name__)

# Each network step of a fetch (connect, each read) and each request's wait for one.
TIMEOUT_SECONDS = 2.0
# How long a fetched set is used without asking again (a key removed from the endpoint
# is still accepted for up to this long).
FRESH_SECONDS = 300.0
# How long the last set fetched keeps verifying while the endpoint cannot be reached.
STALE_SECONDS = 3600.0
# Fewest seconds between two fetches: tokens naming made-up kids cannot make this
# process hammer the endpoint, and a failed fetch is retried this much later.
REFETCH_SECONDS = 5.0
# Fetches running at once: the one requests wait on, and overdue ones not yet ended
# (PyJWKClient's timeout bounds each read, not the whole answer).
MAX_FETCHES_AT_ONCE = 3
# Past that, a fetch starts only once the last has run this long.
GIVE_UP_SECONDS = 60.0


class SigningKeysUnavailable(Exception):
    """The JWKS endpoint cannot tell us the token's key right now (down, slow, or
    answering something that is not a set of usable keys); a retry may succeed."""

    retry_after_seconds = int(REFETCH_SECONDS)


class UnknownSigningKey(Exception):
    """The JWKS endpoint, just asked, does not publish the token's ``kid``."""


class _Fetch:
    """One fetch of the set: when it started and, once ``done``, whether it ``succeeded``."""

    def __init__(self, serial: int):
        self.serial = serial
        self.started_at = time.monotonic()
        self.done = threading.Event()
        self.succeeded: bool | None = None

    def age(self) -> float:
        return time.monotonic() - self.started_at


class JwksKeys:
    def __init__(self, url: str):
        self.url = url
        self.timeout_seconds = TIMEOUT_SECONDS
        self.fresh_seconds = FRESH_SECONDS
        self.stale_seconds = STALE_SECONDS
        self.refetch_seconds = REFETCH_SECONDS
        self.give_up_seconds = GIVE_UP_SECONDS
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=TIMEOUT_SECONDS)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[object, str]] = {}
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._keys_serial = 0  # serial of the fetch that found ``_keys``
        self._latest: _Fetch | None = None  # the fetch started last
        self._running = 0  # fetches started and not yet done

    def key(self, kid: str) -> tuple[object, str]:
        """The public key named ``kid`` and the algorithm it is pinned to."""
        entry = self._keys.get(kid)
        if entry is not None:
            age = self._age()
            if age < self.fresh_seconds:
                return entry
            if age < self.stale_seconds:
                self._start_fetch()
                return entry
        fetch = self._start_fetch() or self._latest
        if fetch is not None:
            fetch.done.wait(self.timeout_seconds)
        # Read before the keys: a fetch that succeeded has already stored what it found.
        succeeded = fetch is not None and fetch.succeeded
        entry = self._keys.get(kid)
        if entry is not None and self._age() < self.stale_seconds:
            return entry
        if entry is None and succeeded:
            raise UnknownSigningKey(kid)
        raise SigningKeysUnavailable()

    def _age(self) -> float:
        return float("inf") if self._fetched_at is None else time.monotonic() - self._fetched_at

    def _start_fetch(self) -> _Fetch | None:
        """The fetch to wait for: the one in flight while younger than ``timeout_seconds``,
        else a new one if the last started at least ``refetch_seconds`` ago (and fewer
        than ``MAX_FETCHES_AT_ONCE`` run, or it started ``give_up_seconds`` ago), else the
        one in flight, overdue, or None."""
        with self._lock:
            latest = self._latest
            in_flight = latest if latest is not None and not latest.done.is_set() else None
            if in_flight is not None and in_flight.age() < self.timeout_seconds:
                return in_flight
            if latest is not None:
                crowded = self._running >= MAX_FETCHES_AT_ONCE and latest.age() < self.give_up_seconds
                if crowded or latest.age() < self.refetch_seconds:
                    return in_flight
            fetch = self._latest = _Fetch(latest.serial + 1 if latest is not None else 1)
            self._running += 1
        threading.Thread(target=self._fetch, args=(fetch,), name="jwks-fetch", daemon=True).start()
        return fetch

    def _fetch(self, fetch: _Fetch) -> None:
        keys, succeeded = {}, False
        try:
            self._client.timeout = self.timeout_seconds
            for jwk in self._client.get_signing_keys():  # use "sig" or unstated, with a kid
                algorithm = jwt_keys.pinned_algorithm(jwk.key)
                # A key the endpoint declares for another algorithm than its type's is skipped.
                if algorithm is not None and jwk.algorithm_name == algorithm:
                    keys[jwk.key_id] = (jwk.key, algorithm)
            if not keys:
                # More likely a broken endpoint than every key withdrawn: keep the last set.
                raise jwt.PyJWKClientError("the JWKS holds no RS256 or ES256 signing key")
            succeeded = True
        except Exception as error:  # noqa: BLE001 -- any failure (network, HTTP, JSON, keys) is one to report and retry
            log.warning("JWKS fetch from %s failed: %s", self.url, error)
        finally:
            with self._lock:
                # An overdue fetch ending after a later one found a set does not bring back older keys.
                if succeeded and fetch.serial > self._keys_serial:
                    self._keys, self._fetched_at, self._keys_serial = keys, time.monotonic(), fetch.serial
                fetch.succeeded = succeeded
                self._running -= 1
            fetch.done.set()
