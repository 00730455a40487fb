"""Child processes of the service, for the tests, the soak and the benchmarks alike.

* ``Child``: one command started in a new session (a process group of its own, so that its
  children — gunicorn workers, Celery pool processes, beat — go with it), logging to a
  file; optionally killed with SIGKILL when its parent dies (``die_with_parent``:
  ``PR_SET_PDEATHSIG``). Stopped gracefully (SIGTERM, a grace period, then SIGKILL to the
  group) or killed outright, and whatever is left of its group is reaped either way.
* ``stop_gracefully`` / ``reap_group``: the same for a ``Popen`` started elsewhere.
* ``wait_until``: poll a condition with a timeout (nothing here sleeps blindly).
* ``http_get`` / ``http_answers``: probe a server that may not be listening yet.

Nothing here imports pytest or the project's service code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class WaitTimeout(AssertionError):
    """A condition polled by ``wait_until`` did not hold in time (a test failure)."""


def wait_until(
    predicate: Callable[[], Any], timeout: float, *, interval: float = 0.2, message: Callable[[], str] | str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes
    (``WaitTimeout`` naming ``message``, called if callable). An exception of the predicate
    ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            raise WaitTimeout(f"condition not met within {timeout:.0f}s: {detail}")
        time.sleep(interval)


def http_get(url: str, *, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too. OSError if nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_answers(url: str, *, timeout: float = 1.0, any_status: bool = False) -> bool:
    """A GET of ``url`` is answered 200 (with ``any_status``: answered at all)."""
    try:
        status = http_get(url, timeout=timeout)[0]
    except OSError:
        return False
    return any_status or status == 200


def reap_group(pgid: int, timeout: float = 10) -> None:
    """SIGKILL whatever is left of a process group until nothing is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def stop_gracefully(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL to its group; nothing of it survives."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
    reap_group(process.pid)


def stop_groups(processes: Mapping[str, subprocess.Popen], grace: float) -> list[str]:
    """SIGTERM to every process's group at once, ``grace`` seconds for all of them, then
    SIGKILL to what is left; the names of those that had not stopped by then."""
    for process in processes.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    survivors = [name for name, process in processes.items() if _group_alive(process.pid)]
    for process in processes.values():
        reap_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    return survivors


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def procfile_commands() -> dict[str, list[str]]:
    """The Procfile's processes: name -> argv."""
    commands = {}
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = shlex.split(command)
    return commands


def tail(path: Path, title: str, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file, titled."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no {title})"
    return f"----- {title} (tail) -----\n" + "\n".join(text.splitlines()[-lines:])


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_the_parent() -> None:
    # Runs in the child between fork and exec: nothing here may take a lock or import.
    # The signal fires when the thread that forked exits, so a long-lived child started
    # this way must be started from its parent's main thread.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One long-lived child in a process group of its own.

    Standard output and standard error go to ``log_path``, each start preceded by a line
    ``===== start N of NAME at HH:MM:SS =====``; with ``stderr_path``, standard error goes
    there instead and neither file gets that line (both hold only what the child wrote).
    ``argv[0]`` is looked up on the ``PATH`` of ``env``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        stderr_path: Path | None = None,
        cwd: Path = PROJECT_ROOT,
        die_with_parent: bool = False,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, extra_args: list[str] | None = None) -> Child:
        assert not self.alive(), f"{self.name} is already running"
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        executable = shutil.which(self.argv[0], path=self.env.get("PATH")) or self.argv[0]
        argv = [executable, *self.argv[1:], *(extra_args or [])]
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(self.log_path, "ab"))
            if self.stderr_path is None:
                log.write(f"\n===== start {self.starts} of {self.name} at {time.strftime('%H:%M:%S')} =====\n".encode())
                log.flush()
            stderr = files.enter_context(open(self.stderr_path, "ab")) if self.stderr_path else subprocess.STDOUT
            self.process = subprocess.Popen(
                argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=stderr,
                start_new_session=True, preexec_fn=_die_with_the_parent if self.die_with_parent else None,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signal_number: int) -> None:
        """A signal to the main process only (gunicorn's master passes it on to its workers)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal_number)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout`` seconds."""
        assert self.process is not None, f"{self.name} was never started"
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_answering(self, probe: Callable[[], Any], timeout: float, *, interval: float = 0.1) -> Child:
        """Wait until ``probe()`` is truthy; fails at once, with its log, if the child exits."""

        def answering():
            if not self.alive():
                raise WaitTimeout(f"{self.name} exited with {self.returncode}\n{self.log_tail()}")
            return probe()

        wait_until(answering, timeout, interval=interval, message=self.log_tail)
        return self

    def kill_group(self) -> None:
        """SIGKILL to the whole process group (pool processes, beat), reaped."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait_exit(30)
        reap_group(self.pid)

    def terminate(self, timeout: float) -> int:
        """SIGTERM (a graceful stop) and wait for the exit code; if it does not exit within
        ``timeout``, the group is killed and this fails with its log."""
        self.send(signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill_group()
            raise WaitTimeout(f"{self.name} did not stop within {timeout}s of SIGTERM\n{self.log_tail()}")
        reap_group(self.pid)
        return code

    def stop(self, grace: float = 30) -> None:
        """Clean-up, whatever the state: SIGTERM, ``grace`` seconds, then SIGKILL to the
        group; nothing of it survives."""
        if self.process is not None:
            stop_gracefully(self.process, grace)

    def log_tail(self, lines: int = 60) -> str:
        if self.stderr_path is None:
            return tail(self.log_path, f"{self.name} log", lines)
        return tail(self.stderr_path, f"{self.name} stderr", lines) + "\n" + tail(self.log_path, f"{self.name} stdout", 10)
