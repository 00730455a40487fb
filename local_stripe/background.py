"""The server's background threads (the validator, webhook delivery): each one a daemon
thread that sleeps on a condition until woken, and that ``stop()`` ends and waits for."""

from __future__ import annotations

import threading


class BackgroundThread:
    def __init__(self, name: str) -> None:
        self._wake = threading.Condition()  # reentrant: a holder may notify again
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError
