"""What refused credentials may cost the database: a bound per source, and one per process.

A credential the caller cache does not hold is looked up in PostgreSQL. Without a bound,
a burst of wrong App Passwords (or of valid JWTs of unknown users) is a query each: a
cheap way to load the database. So each web process keeps:

- the refusals that stay refusals (an unknown or revoked App Password: tokens are 256-bit
  random, and revocation is for good), answered again without a query;
- two token buckets of failed lookups, one per source address (an IPv6 address by its
  /64) and one for all sources together. Only a lookup that refused the credential
  spends a token, so a valid caller's many concurrent first requests spend none. While
  either is empty, a credential not yet known is refused with 429 and ``Retry-After``
  before any query. A random new token each time cannot get past that. Lookups already
  under way when a bucket empties may take it below zero (at most the process's
  database connections, 10): that debt is paid off before the next one is admitted;
- the credentials it verified in the last ``VERIFIED_SECONDS``: those are looked up even
  while the buckets are empty, so a burst from elsewhere does not refuse a caller that
  is already at work.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from dataclasses import dataclass

import cachetools

# A misconfigured client sending a wrong password says so within its first few requests;
# past that, one lookup a second is plenty to notice a password that was fixed meanwhile.
PER_SOURCE_BURST, PER_SOURCE_PER_SECOND = 10, 1.0
# All sources together: at most this many failed lookups per web process (about 1 ms of
# PostgreSQL each), whatever the number of addresses an attacker sends from.
OVERALL_BURST, OVERALL_PER_SECOND = 100, 20.0
# How long a verified credential keeps its lookups while the buckets are empty, and how
# long a lasting refusal is answered from memory.
VERIFIED_SECONDS = 600
REFUSED_SECONDS = 600
# Entries per table: 10,000 digests or buckets are a few MiB at most.
MAX_ENTRIES = 10_000


class TokenBucket:
    """``burst`` tokens, refilled at ``per_second``; not thread-safe (its owner locks)."""

    def __init__(self, burst: float, per_second: float) -> None:
        self.burst = burst
        self.per_second = per_second
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.per_second)
        self._updated = now

    def wait_seconds(self) -> float:
        """0 if a token is there, else how long until one is."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.per_second

    def spend(self) -> None:
        self._refill()
        self._tokens -= 1


class TooManyFailedLookups(Exception):
    def __init__(self, retry_after_seconds: int, per_source: bool):
        super().__init__(f"no failed lookups left; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds
        self.per_source = per_source


@dataclass(frozen=True)
class Lookup:
    """One admitted lookup: what ``succeeded`` or ``failed`` settles."""

    digest: bytes
    source: str


def credential_digest(token: str) -> bytes:
    # Kept instead of the token: a digest is 32 bytes whatever the caller sent.
    return hashlib.sha256(token.encode()).digest()


def source_of(address: str | None) -> str:
    """The source a bucket is kept for: the address, an IPv6 one by its /64 (one host
    may hold all of those)."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class LookupLimits:
    def __init__(self) -> None:
        self._overall = TokenBucket(OVERALL_BURST, OVERALL_PER_SECOND)
        self._sources: cachetools.LRUCache[str, TokenBucket] = cachetools.LRUCache(maxsize=MAX_ENTRIES)
        self._verified: cachetools.TTLCache[bytes, bool] = cachetools.TTLCache(MAX_ENTRIES, VERIFIED_SECONDS)
        self._refused: cachetools.TTLCache[bytes, str] = cachetools.TTLCache(MAX_ENTRIES, REFUSED_SECONDS)
        self._lock = threading.Lock()

    def lasting_refusal(self, digest: bytes) -> str | None:
        """The sentence a credential was refused with for good, if it was."""
        with self._lock:
            return self._refused.get(digest)

    def admit(self, digest: bytes, address: str | None) -> Lookup:
        """Admit one database lookup of the credential, or ``TooManyFailedLookups``."""
        source = source_of(address)
        with self._lock:
            if digest not in self._verified:
                bucket = self._sources.get(source)
                waits = ((True, 0.0 if bucket is None else bucket.wait_seconds()), (False, self._overall.wait_seconds()))
                for per_source, wait in waits:
                    if wait > 0:
                        raise TooManyFailedLookups(max(1, math.ceil(wait)), per_source)
        return Lookup(digest, source)

    def succeeded(self, lookup: Lookup) -> None:
        with self._lock:
            self._verified[lookup.digest] = True

    def failed(self, lookup: Lookup, lasting_refusal: str | None = None) -> None:
        """The lookup refused the credential: it spends a token of its source and of all;
        ``lasting_refusal``: the sentence to answer it with from now on, without a query."""
        with self._lock:
            self._verified.pop(lookup.digest, None)
            bucket = self._sources.get(lookup.source)
            if bucket is None:
                bucket = self._sources[lookup.source] = TokenBucket(PER_SOURCE_BURST, PER_SOURCE_PER_SECOND)
            bucket.spend()
            self._overall.spend()
            if lasting_refusal is not None:
                self._refused[lookup.digest] = lasting_refusal
