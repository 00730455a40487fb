"""Voids under load: a share of the accepted events is taken back through the real
endpoint (``POST …/external-usage/{id}/void``) while the load and the faults run.

The voider sees every id the first time the service answers it accepted
(``Ledger.on_first_acceptance``) and picks ``VOID_SHARE`` of them:

* ``soon``: asked right after acceptance. The event is usually still queued (409 with
  ``Retry-After``: asked again after it, as a careful client does) or being recorded, and
  its row races its own report: the void may be ``never_sent`` or a cancel of a send in
  flight;
* ``later``: asked seconds to a minute later, mostly a cancel of a reported row (some
  after the load stopped, while the pipeline drains).

Some voids are asked again after their answer (same reason: the same void must come
back, never a second one), some are asked twice at once (two reasons: both answers name
the one void that won). A 5xx, a connection failure or a lost answer is asked again
(a void is never done twice, so that is always safe), within ``RETRY_BUDGET_SECONDS``.

The void ledger keeps what the service answered; the report (``soak.report``) compares
it with the database's ``usage_voids`` and with what Stripe counts.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import random
import threading
import time
import traceback
from collections.abc import Callable

from soak.load import REQUEST_TIMEOUT_SECONDS, RETRY_BUDGET_SECONDS, USAGE_PATH, Answer, PlannedEvent, post
from soak.seeding import World

# The share of accepted events voided: about 1,500 voids in a 150 s run at 200 events/s,
# enough for every race (queued, recording, reporting, a fault in the middle) to happen
# many times, few enough that the totals are still mostly the load's.
VOID_SHARE = 0.05
# Of those, voided right after acceptance (usually still queued, or racing their report).
SOON_SHARE = 0.4
SOON_DELAY_SECONDS = (0.0, 0.3)
LATER_DELAY_SECONDS = (3.0, 60.0)
# Voids asked again once answered (idempotency), and voids asked twice at once.
REPEAT_SHARE = 0.2
CONCURRENT_SHARE = 0.1
VOID_THREADS = 6
# A 404 for an event the service accepted is wrong (the contract: 404 is "no such
# event"); it is recorded, and asked again this many times before it is taken as final.
NOT_FOUND_RETRIES = 5
MAX_BACKOFF_SECONDS = 2.0
EXAMPLES_KEPT = 20
# The longest the last planned void can take once the load stopped: its delay, then two
# requests (a repeated void) each through the whole retry budget and a last timeout.
STOP_TIMEOUT_SECONDS = LATER_DELAY_SECONDS[1] + 2 * (RETRY_BUDGET_SECONDS + REQUEST_TIMEOUT_SECONDS + MAX_BACKOFF_SECONDS) + 30


@dataclasses.dataclass(frozen=True)
class PlannedVoid:
    event_id: str
    organization_id: str
    stripe_value: int
    timing: str  # "soon" or "later"
    kind: str  # "single", "repeated" or "concurrent"
    reason: str


class VoidLedger:
    """What the void endpoint answered, from the client's side. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.planned: dict[str, PlannedVoid] = {}
        # Voids a 2xx answer named: event id -> the reason the answered void holds.
        self.confirmed: dict[str, str] = {}
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()  # (timing, outcome)
        self.final: collections.Counter[tuple[str, str]] = collections.Counter()  # (kind, outcome)
        self.methods_answered: collections.Counter[str] = collections.Counter()  # of every 2xx answer
        self.queued_retries = 0  # 409 with Retry-After, asked again after it
        self.not_found_for_accepted: list[str] = []  # 404 answers for an accepted event
        self.given_up: list[str] = []  # no final answer within the retry budget
        self.inconsistent: list[str] = []  # an answer that contradicts itself or an earlier one
        self.unexpected_answers: list[str] = []
        self.crashes: list[str] = []

    def frozen(self) -> VoidLedger:
        """A copy, taken under the lock: what the report reads, even if a thread still asks."""
        with self._lock:
            copy = VoidLedger()
            for name, value in vars(self).items():
                if name != "_lock":
                    setattr(copy, name, value.copy() if hasattr(value, "copy") else value)
            return copy

    def plan(self, void: PlannedVoid) -> None:
        with self._lock:
            self.planned[void.event_id] = void

    def attempt(self, timing: str, outcome: str) -> None:
        with self._lock:
            self.attempts[(timing, outcome)] += 1
            if outcome == "409 queued":
                self.queued_retries += 1

    def finished(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.final[(kind, outcome)] += 1

    def confirm(self, event_id: str, reason: str, method: str | None) -> None:
        with self._lock:
            known = self.confirmed.setdefault(event_id, reason)
            if known != reason:
                self.inconsistent.append(f"{event_id}: answered the void of reason {reason!r}, earlier {known!r}")
            elif method is not None:
                self.methods_answered[method] += 1

    def problem(self, bucket: list[str], message: str) -> None:
        with self._lock:
            bucket.append(message)


class Voider:
    """Voids a share of the accepted events: ``consider`` every accepted id; ``start()``,
    later ``stop()`` (waits for every planned void to be answered)."""

    def __init__(self, port: int, world: World, *, seed: int):
        self.port = port
        self.world = world
        self.ledger = VoidLedger()
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._due: list[tuple[float, int, PlannedVoid]] = []  # a heap by due time
        self._serial = 0
        self._condition = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- planning (sender threads of the load generator) ------------------------------

    def consider(self, event_id: str, event: PlannedEvent) -> None:
        """Ledger.on_first_acceptance: void this event, or not."""
        with self._random_lock:
            if self._random.random() >= VOID_SHARE:
                return
            soon = self._random.random() < SOON_SHARE
            delay = self._random.uniform(*(SOON_DELAY_SECONDS if soon else LATER_DELAY_SECONDS))
            roll = self._random.random()
            kind = "concurrent" if roll < CONCURRENT_SHARE else "repeated" if roll < CONCURRENT_SHARE + REPEAT_SHARE else "single"
            credential = self._random.choice((self.world.app_password, self.world.jwt))
            self._serial += 1
            serial = self._serial
        void = PlannedVoid(
            event_id, event.organization_id, event.stripe_value, "soon" if soon else "later", kind,
            f"soak void {serial}: {'voided at once' if soon else f'voided after {delay:.1f} s'} ({kind})",
        )
        self.ledger.plan(void)
        with self._condition:
            heapq.heappush(self._due, (time.monotonic() + delay, serial, (void, credential)))
            self._condition.notify()

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name=f"soak-voider-{i}", daemon=True) for i in range(VOID_THREADS)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float, watch: Callable[[], None]) -> list[str]:
        """Plan nothing more; wait until every planned void was sent and answered, calling
        ``watch`` about once a second meanwhile (a process that died is started again: the
        voids wait for the pipeline). The names of the threads still running after
        ``timeout`` (abandoned), or none."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                watch()
                thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
        still_running = [thread.name for thread in self._threads if thread.is_alive()]
        if still_running:
            self.abandon()
        return still_running

    def abandon(self) -> None:
        with self._condition:
            self._stopping = True
            self._due.clear()
            self._condition.notify_all()

    def _next(self):
        """The next void due, waiting for it; None once stopping and nothing is left."""
        with self._condition:
            while True:
                if self._due:
                    due_at = self._due[0][0]
                    wait = due_at - time.monotonic()
                    if wait <= 0:
                        return heapq.heappop(self._due)[2]
                    self._condition.wait(min(wait, 1.0))
                elif self._stopping:
                    return None
                else:
                    self._condition.wait(1.0)

    def _run(self) -> None:
        while (job := self._next()) is not None:
            void, credential = job
            try:
                self._do(void, credential)
            except Exception:  # noqa: BLE001 - recorded; the run fails, the others go on
                self.ledger.problem(self.ledger.crashes, traceback.format_exc())

    # -- one void ---------------------------------------------------------------------

    def _do(self, void: PlannedVoid, credential: str) -> None:
        if void.kind == "concurrent":
            reasons = (void.reason + " A", void.reason + " B")
            answers: list[Answer | None] = [None, None]
            barrier = threading.Barrier(2)

            def ask(index: int) -> None:
                barrier.wait(timeout=10)
                answers[index] = self._ask(void, reasons[index], credential)

            other = threading.Thread(target=ask, args=(1,), name="soak-voider-twin", daemon=True)
            other.start()
            ask(0)
            other.join(RETRY_BUDGET_SECONDS + 60)
            held = [self._check(void, answer, reasons) for answer in answers]
            if held[0] and held[1] and held[0] != held[1]:
                self.ledger.problem(
                    self.ledger.inconsistent, f"{void.event_id}: two voids asked at once answered {held[0]!r} and {held[1]!r}"
                )
            return
        answer = self._ask(void, void.reason, credential)
        self._check(void, answer, (void.reason,))
        if void.kind == "repeated" and answer is not None and answer.status in (200, 202):
            # The same void again (a client that did not see its answer): the same one back.
            again = self._ask(void, void.reason, credential)
            self._check(void, again, (void.reason,))
            first_state, second_state = answer.status, (again.status if again else None)
            if first_state == 200 and second_state == 202:
                self.ledger.problem(self.ledger.inconsistent, f"{void.event_id}: a completed void answered 202 when asked again")

    def _ask(self, void: PlannedVoid, reason: str, credential: str) -> Answer | None:
        """Ask until a final answer (2xx or a 4xx other than queued); None past the budget."""
        path = f"{USAGE_PATH}/{void.event_id}/void"
        body = json.dumps({"reason": reason}).encode()
        headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        attempt = not_found = 0
        while True:
            attempt += 1
            result, _ = post(self.port, path, body, headers)
            retry_after = 0.0
            if isinstance(result, Answer):
                queued = result.status == 409 and "retry-after" in result.headers
                self.ledger.attempt(void.timing, f"{result.status} queued" if queued else str(result.status))
                if result.status in (200, 202):
                    self.ledger.finished(void.kind, str(result.status))
                    return result
                if result.status == 404:
                    not_found += 1
                    self.ledger.problem(
                        self.ledger.not_found_for_accepted,
                        f"{void.event_id} ({void.timing}) answered 404 on attempt {attempt}: {result.body[:200]!r}",
                    )
                    if not_found > NOT_FOUND_RETRIES:
                        self.ledger.finished(void.kind, "404")
                        return result
                elif not queued and result.status < 500:
                    self.ledger.finished(void.kind, str(result.status))
                    self.ledger.problem(
                        self.ledger.unexpected_answers,
                        f"void of {void.event_id} answered {result.status}: {result.body[:300]!r}",
                    )
                    return result
                retry_after = float(result.headers.get("retry-after", "0") or 0)
            else:
                self.ledger.attempt(void.timing, result.outcome)
            if time.monotonic() > deadline:
                self.ledger.finished(void.kind, "given up")
                self.ledger.problem(self.ledger.given_up, f"{void.event_id}: no final answer within {RETRY_BUDGET_SECONDS} s")
                return None
            if retry_after:
                time.sleep(retry_after)  # what the service asked for, as it is
            else:
                time.sleep(min(MAX_BACKOFF_SECONDS, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))

    def _check(self, void: PlannedVoid, answer: Answer | None, reasons: tuple[str, ...]) -> str | None:
        """The reason the answered void holds (None without a 2xx), the answer checked."""
        if answer is None or answer.status not in (200, 202):
            return None
        record = answer.json() or {}
        held = record.get("void") or {}
        problems = []
        if record.get("id") != void.event_id:
            problems.append(f"names the event {record.get('id')}")
        if held.get("reason") not in reasons:
            problems.append(f"holds the reason {held.get('reason')!r}, not one of {list(reasons)}")
        if answer.status == 200 and (record.get("status") != "voided" or not held.get("completed_at")):
            problems.append(f"200 (complete) with status {record.get('status')!r}, completed_at {held.get('completed_at')!r}")
        if answer.status == 202 and record.get("status") == "voided" and not held.get("completed_at"):
            problems.append("202 with the row voided but the void not completed")
        if problems:
            self.ledger.problem(self.ledger.inconsistent, f"{void.event_id}: the {answer.status} answer " + "; ".join(problems))
        if held.get("reason") is None:
            return None
        self.ledger.confirm(void.event_id, held["reason"], held.get("method"))
        return held["reason"]


def ledger_summary(ledger: VoidLedger) -> dict:
    """The client's side of the voids, for the report."""

    def table(counter):
        out: dict[str, dict[str, int]] = {}
        for (group, outcome), count in sorted(counter.items()):
            out.setdefault(group, {})[outcome] = count
        return out

    planned = collections.Counter((v.timing, v.kind) for v in ledger.planned.values())
    return {
        "asked": len(ledger.planned),
        "asked_by_timing_and_kind": table(planned),
        "attempts_by_timing_and_outcome": table(ledger.attempts),
        "final_by_kind_and_outcome": table(ledger.final),
        "confirmed_by_an_answer": len(ledger.confirmed),
        "methods_in_answers": dict(ledger.methods_answered),
        "queued_409_retried_after_retry_after": ledger.queued_retries,
        "not_found_for_accepted_event": len(ledger.not_found_for_accepted),
        "given_up": len(ledger.given_up),
        "inconsistent_answers": len(ledger.inconsistent),
        "unexpected_answers": len(ledger.unexpected_answers),
        "examples": {
            "not_found_for_accepted_event": ledger.not_found_for_accepted[:EXAMPLES_KEPT],
            "given_up": ledger.given_up[:EXAMPLES_KEPT],
            "inconsistent_answers": ledger.inconsistent[:EXAMPLES_KEPT],
            "unexpected_answers": ledger.unexpected_answers[:EXAMPLES_KEPT],
            "crashes": ledger.crashes[:3],
        },
    }
