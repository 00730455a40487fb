"""The server's notion of now: real time plus an offset that tests move forward.

Every time-based rule reads it: identifier uniqueness windows, idempotency key expiry,
summary lag, error report windows, session expiry, the ``created`` of what the server
makes. Moving it is how a test sees "24 hours later" at once. Threads that wait for a
moment of this clock (the validator) are woken when it moves (``on_advance``).

Not read from it: the webhook signature's timestamp (the receiver checks it against its
own real clock) and the calls log's ``at`` (tests measure real waits between calls).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments) each time the clock moves."""
        self._listeners.append(listener)

    def advance(self, seconds: float) -> float:
        """Move now forward by ``seconds`` (>= 0); the new now."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        self._moved()
        return self.now()

    def reset(self) -> None:
        """Back to real time."""
        with self._lock:
            self._offset = 0.0
        self._moved()

    def _moved(self) -> None:
        for listener in self._listeners:
            listener()
