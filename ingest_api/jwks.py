"""The signing keys a JWKS endpoint publishes (``JWT_JWKS_URL``), by ``kid``, each pinned
to the one algorithm its type allows (``shared.jwt_keys``).

The request path does no network call while the token's key is known: a dict lookup and
a clock read. Fetches run in a thread of their own, one at a time, at most every
``refetch_seconds``, so an endpoint that is down or slow costs a request at most
``timeout_seconds`` of waiting, however many requests arrive together:

- key known, set younger than ``fresh_seconds``: used.
- key known, set older: used, and a refetch starts in the background (a request never
  waits for a key it already has). While the endpoint cannot be reached, the last keys
  fetched keep verifying for up to ``stale_seconds``, then ``SigningKeysUnavailable``.
- key not known: the set is refetched (a rotation may have just published it) and the
  request waits for that fetch. A set fetched successfully that lacks the key:
  ``UnknownSigningKey`` (401). No set, a failed fetch or one still running after
  ``timeout_seconds``: ``SigningKeysUnavailable`` (503; a retry may succeed).

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


class SigningKeysUnavailable(Exception):
    """The JWKS endpoint cannot tell us the token's key right now (down, slow, or
    answering something that is not a set of usable keys); a retry may succeed."""

    retry_after_seconds = int(REFETCH_SECONDS)


class UnknownSigningKey(Exception):
    """The JWKS endpoint, just asked, does not publish the token's ``kid``."""


class JwksKeys:
    def __init__(self, url: str):
        self.url = url
        self.timeout_seconds = TIMEOUT_SECONDS
        self.fresh_seconds = FRESH_SECONDS
        self.stale_seconds = STALE_SECONDS
        self.refetch_seconds = REFETCH_SECONDS
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=TIMEOUT_SECONDS)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[object, str]] = {}
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._attempted_at: float | None = None  # ... the last fetch started
        self._failing = False  # whether the last finished fetch failed
        self._in_flight: threading.Event | None = None

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
        done = self._start_fetch()
        if done is not None:
            done.wait(self.timeout_seconds)
        entry = self._keys.get(kid)
        if entry is not None and self._age() < self.stale_seconds:
            return entry
        settled = done is None or done.is_set()
        if entry is None and settled and self._fetched_at is not None and not self._failing:
            raise UnknownSigningKey(kid)
        raise SigningKeysUnavailable()

    def _age(self) -> float:
        return float("inf") if self._fetched_at is None else time.monotonic() - self._fetched_at

    def _start_fetch(self) -> threading.Event | None:
        """The fetch now running (a new one if none runs and the last started at least
        ``refetch_seconds`` ago), or None."""
        with self._lock:
            now = time.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self.refetch_seconds:
                return self._in_flight
            # A fetch still running after a minute (an endpoint trickling bytes) is given up on.
            if self._in_flight is not None and now - self._attempted_at < 30 * self.timeout_seconds:
                return self._in_flight
            self._attempted_at = now
            done = self._in_flight = threading.Event()
        threading.Thread(target=self._fetch, args=(done,), name="jwks-fetch", daemon=True).start()
        return done

    def _fetch(self, done: threading.Event) -> None:
        try:
            self._client.timeout = self.timeout_seconds
            keys = {}
            for jwk in self._client.get_signing_keys():  # use "sig" or unstated, with a kid
                algorithm = jwt_keys.pinned_algorithm(jwk.key)
                # A key the endpoint declares for another algorithm than its type's is skipped.
                if algorithm is not None and jwk.algorithm_name == algorithm:
                    keys[jwk.key_id] = (jwk.key, algorithm)
            if not keys:
                # More likely a broken endpoint than every key withdrawn: keep the last set.
                raise jwt.PyJWKClientError("the JWKS holds no RS256 or ES256 signing key")
        except Exception as error:  # noqa: BLE001 -- any failure (network, HTTP, JSON, keys) is one to report and retry
            log.warning("JWKS fetch from %s failed: %s", self.url, error)
            with self._lock:
                self._failing = True
        else:
            with self._lock:
                self._keys = keys
                self._fetched_at = time.monotonic()
                self._failing = False
        finally:
            with self._lock:
                if self._in_flight is done:
                    self._in_flight = None
            done.set()
