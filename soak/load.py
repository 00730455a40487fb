"""The load generator, and its own ledger of what the service accepted and what it must cost.

A pacer thread plans requests at a bounded rate (``rate`` new events per second; a
request that carries no new event counts as one) and hands them to ``concurrency``
sender threads; each request opens its own connection to 127.0.0.1. The mix:

* single events (``POST …/external-usage``), most with an ``Idempotency-Key``;
* batches of 5 to 60 (``POST …/batch``) whose events all, none or some carry an
  ``idempotency_key``, some with an invalid event inside (answered ``rejected``, the
  others still accepted);
* replays of an earlier keyed request, same key and same body: the answer must name the
  same event id(s) (200, or ``duplicate`` in a batch), never a new one;
* invalid requests (bad JSON, wrong type, missing or unknown fields, bad credentials,
  a key reused with another body, …): each must get its 4xx;

each with the App Password or the JWT, at random. The ledger keeps every event id answered 2xx with the
event's organization and its ``agent700_cost`` and Stripe value, computed here with
``Decimal`` from the seeded prices, never with the service's code.

Retries are those of a careful client. A 5xx, or a connection that never reached the
server (refused), means nothing was accepted, so the request is sent again (after
``Retry-After``, at most ``MAX_BACKOFF_SECONDS``). A connection lost after the request
was sent is ambiguous: a request with Idempotency-Keys is sent again with the same keys
(the service answers with the original ids), one without is not, and its events go to
the ledger's ``ambiguous`` list, to be told apart in the database by their content (each
event's organization, tokens and ``occurred_at`` are unique in the run).
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime as dt
import decimal
import http.client
import json
import queue
import random
import threading
import time
import traceback
from decimal import Decimal

from soak.seeding import ModelPrice, World

USAGE_PATH = "/api/billing/external-usage"
BATCH_PATH = f"{USAGE_PATH}/batch"
MAX_TOKENS = 2_147_483_647
# A request the service does not answer within this is given up (the service bounds its
# own work to about a second; a restart of the web process takes a few).
REQUEST_TIMEOUT_SECONDS = 30
# How long one request keeps being retried through an outage before it is given up.
RETRY_BUDGET_SECONDS = 120
MAX_BACKOFF_SECONDS = 2.0
KEYED_SHARE = 0.75
REPLAYABLE_KEPT = 2000
# Wide enough for any product of a token count and an 18-decimal rate; anything that
# would still need rounding raises instead.
EXACT = decimal.Context(prec=100, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])


def agent700_cost(price: ModelPrice, input_tokens: int, output_tokens: int) -> Decimal:
    return EXACT.add(
        EXACT.multiply(Decimal(input_tokens), price.agent700_input_per_token),
        EXACT.multiply(Decimal(output_tokens), price.agent700_output_per_token),
    )


def stripe_value(cost: Decimal, decimals: int) -> int:
    """``cost × 10^decimals`` rounded half-even to a whole number, as the contract says
    (the one rounding there is, so it is the one place without the Inexact trap)."""
    scaled = cost.scaleb(decimals, context=EXACT)
    return int(scaled.quantize(Decimal(1), rounding=decimal.ROUND_HALF_EVEN, context=decimal.Context(prec=100)))


@dataclasses.dataclass(frozen=True)
class PlannedEvent:
    """One usage event the generator sends, and what it must be billed."""

    organization_id: str
    model_name: str
    input_tokens: int
    output_tokens: int
    occurred_at: dt.datetime
    idempotency_key: str | None
    body: dict
    agent700_cost: Decimal
    stripe_value: int

    @property
    def content(self) -> tuple:
        """What identifies the event in the database without its id (unique per run)."""
        return (self.organization_id, self.occurred_at, self.input_tokens, self.output_tokens)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def unknown_outcome(answer: Answer) -> bool:
    """A 503 that says the service cannot know whether its queue took the events."""
    return answer.status == 503 and (answer.json() or {}).get("status") == "unknown"


def unknown_ids(answer: Answer) -> list[str]:
    body = answer.json() or {}
    if "results" in body:
        return [result["id"] for result in body["results"] if result.get("status") == "unknown"]
    return [body["id"]]


@dataclasses.dataclass(frozen=True)
class ConnectionFailure:
    outcome: str  # "connection refused", "connection reset", "timeout", …
    request_sent: bool  # False: the server never saw it; True: it may have acted on it


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[Answer | ConnectionFailure, float]:
    """One POST on a connection of its own: the answer (and its time in ms), or how the
    connection failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
    started = time.perf_counter()
    try:
        try:
            connection.connect()
        except OSError as error:
            # Never reached the server: nothing can have been accepted.
            outcome = "connection refused" if isinstance(error, ConnectionRefusedError) else "connect failed"
            return ConnectionFailure(outcome, request_sent=False), 0.0
        try:
            connection.request("POST", path, body=body, headers=headers | {"Connection": "close"})
            response = connection.getresponse()
            data = response.read()
        except TimeoutError:
            return ConnectionFailure("timeout", request_sent=True), 0.0
        except (OSError, http.client.HTTPException) as error:
            outcome = "connection reset" if isinstance(error, (ConnectionError, http.client.RemoteDisconnected)) else type(error).__name__
            return ConnectionFailure(outcome, request_sent=True), 0.0
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data), elapsed_ms
    finally:
        connection.close()


class Ledger:
    """What the service answered, from the client's side. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted: dict[str, PlannedEvent] = {}
        self.ids_by_key: dict[str, str] = {}
        self.ambiguous: dict[tuple, PlannedEvent] = {}
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.idempotency_mismatches: list[str] = []
        self.invalid_accepted: list[str] = []
        self.unexpected_answers: list[str] = []
        self.latencies_ms: list[float] = []
        self.events_sent = 0  # new events, each counted once however often it was sent
        self.crashes: list[str] = []  # a generator thread that died: the run proves nothing
        # Requests the service did act on although their answer never arrived (a retry with
        # the same key was answered with the original id): in-flight work cut off.
        self.answers_lost_after_acceptance = 0
        # 503 answers that said the outcome is unknown (the queue's reply was lost), per
        # event, and what the status endpoint then said of each: accepted, not accepted.
        self.unknown_outcomes = 0
        self.unknown_resolved: collections.Counter[str] = collections.Counter()
        # Called (outside the lock, on the sender's thread) with (event id, event) the first
        # time an id is answered accepted: the voider (``soak.voids``) picks its share here.
        self.on_first_acceptance: collections.abc.Callable[[str, PlannedEvent], None] | None = None

    def attempt(self, kind: str, outcome: str, latency_ms: float | None) -> None:
        with self._lock:
            self.attempts[(kind, outcome)] += 1
            if latency_ms is not None:
                self.latencies_ms.append(latency_ms)

    def finished(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.requests[(kind, outcome)] += 1

    def accept(self, event: PlannedEvent, event_id: str) -> None:
        """The service answered ``event_id`` for ``event`` (new, or a replay)."""
        with self._lock:
            known = self.accepted.get(event_id)
            if known is not None and known.content != event.content:
                self.idempotency_mismatches.append(f"event id {event_id} answered for two different events")
            if event.idempotency_key is not None:
                first_id = self.ids_by_key.setdefault(event.idempotency_key, event_id)
                if first_id != event_id:
                    self.idempotency_mismatches.append(
                        f"Idempotency-Key {event.idempotency_key} answered {event_id}, earlier {first_id}"
                    )
                    return
            first = event_id not in self.accepted
            self.accepted[event_id] = event
            self.ambiguous.pop(event.content, None)
        if first and self.on_first_acceptance is not None:
            self.on_first_acceptance(event_id, event)

    def unknown(self, count: int = 1) -> None:
        with self._lock:
            self.unknown_outcomes += count

    def resolved(self, outcome: str) -> None:
        with self._lock:
            self.unknown_resolved[outcome] += 1

    def answer_was_lost(self, count: int = 1) -> None:
        with self._lock:
            self.answers_lost_after_acceptance += count

    def sending(self, event_count: int) -> None:
        with self._lock:
            self.events_sent += event_count

    def maybe_accepted(self, event: PlannedEvent) -> None:
        """Sent without a key, connection lost before the answer: it may or may not be billed."""
        with self._lock:
            self.ambiguous[event.content] = event

    def problem(self, bucket: list[str], message: str) -> None:
        with self._lock:
            bucket.append(message)


class LoadGenerator:
    """Steady load against the web process; ``start()``, later ``stop()`` (waits for the senders)."""

    def __init__(
        self, port: int, world: World, *, rate: float, concurrency: int, seed: int, stripe_value_decimals: int
    ):
        self.port = port
        self.world = world
        self.rate = rate
        self.concurrency = concurrency
        self.stripe_value_decimals = stripe_value_decimals
        self.ledger = Ledger()
        self._random = random.Random(seed)  # the pacer's: the plan is reproducible for a seed
        self._run_tag = f"{seed}-{time.time_ns() // 1_000_000}"
        self._serial = 0
        self._contents_used: set[tuple] = set()
        self._jobs: queue.Queue = queue.Queue(maxsize=concurrency * 2)
        self._stopping = threading.Event()
        self._replayable: collections.deque = collections.deque(maxlen=REPLAYABLE_KEPT)
        self._replayable_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- running ---------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._pace, name="soak-pacer", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_jobs, name=f"soak-sender-{index}", daemon=True)
            for index in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = RETRY_BUDGET_SECONDS + REQUEST_TIMEOUT_SECONDS + 10) -> None:
        """Plan nothing more; wait for the requests in flight (their retries included)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stopped_at = time.monotonic()
        still_running = [thread.name for thread in self._threads if thread.is_alive()]
        if still_running:
            raise RuntimeError(f"load generator threads did not finish within {timeout:.0f}s: {still_running}")

    def abandon(self) -> None:
        """Plan nothing more and do not wait (the sender threads are daemons)."""
        self._stopping.set()
        self.stopped_at = time.monotonic()

    def _pace(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stopping.is_set():
                units, job = self._plan_job()
                next_at += units / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1:
                    next_at = time.monotonic()  # fell behind (senders blocked by an outage): no catch-up burst
                while not self._stopping.is_set():
                    try:
                        self._jobs.put(job, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except Exception:  # noqa: BLE001 - recorded; the run fails
            self.ledger.problem(self.ledger.crashes, traceback.format_exc())
        finally:
            for _ in range(self.concurrency):
                self._jobs.put(None)

    def _send_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - recorded; the run fails, the others go on
                self.ledger.problem(self.ledger.crashes, traceback.format_exc())

    # -- planning (pacer thread only: self._random is not shared) -----------------------

    def _plan_job(self):
        """(pace units, callable) of the next request."""
        roll = self._random.random()
        if roll < 0.68:
            event = self._plan_event(keyed=self._random.random() < KEYED_SHARE)
            credential = self._credential()
            return 1, lambda: self._send_single(event, credential)
        if roll < 0.75:
            size = self._random.randint(5, 60)
            # Every event keyed (safe to resend whole, and replayable), none, or some.
            keyed_share = self._random.choice((1.0, 1.0, 1.0, 0.0, KEYED_SHARE))
            events = [self._plan_event(keyed=self._random.random() < keyed_share) for _ in range(size)]
            invalid_count = self._random.choice((0, 0, 0, 1, 2))
            invalid_bodies = [self._invalid_event_body() for _ in range(invalid_count)]
            slots = [("valid", event) for event in events] + [("invalid", body) for body in invalid_bodies]
            self._random.shuffle(slots)
            credential = self._credential()
            return size, lambda: self._send_batch(slots, credential)
        if roll < 0.84:
            return 1, self._send_replay
        if roll < 0.86:
            return 1, self._send_conflict
        invalid = self._plan_invalid_request()
        return 1, lambda: self._send_invalid(*invalid)

    def _credential(self) -> str:
        return self._random.choice((self.world.app_password, self.world.jwt))

    def _tokens(self) -> int:
        roll = self._random.random()
        if roll < 0.01:
            return MAX_TOKENS
        if roll < 0.03:
            return self._random.choice((0, 1))
        return self._random.randint(0, 200_000)

    def _plan_event(self, *, keyed: bool) -> PlannedEvent:
        self._serial += 1
        organization = self._random.choice(self.world.organizations)
        price = self._random.choice(list(self.world.prices.values()))
        input_tokens, output_tokens = self._tokens(), self._tokens()
        occurred_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._random.uniform(0, 3600))
        # Unique content, so that an event sent without a key can be found by it.
        while (organization.id, occurred_at, input_tokens, output_tokens) in self._contents_used:
            occurred_at -= dt.timedelta(microseconds=1)
        self._contents_used.add((organization.id, occurred_at, input_tokens, output_tokens))
        body = {
            "user_id": self.world.attributed_user_id,
            "organization_id": organization.id,
            "model_name": price.model_name,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "service_name": self.world.service_name,
            "occurred_at": occurred_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        }
        if self._random.random() < 0.2:
            body["source"] = "soak"
        cost = agent700_cost(price, input_tokens, output_tokens)
        return PlannedEvent(
            organization_id=organization.id, model_name=price.model_name, input_tokens=input_tokens,
            output_tokens=output_tokens, occurred_at=occurred_at,
            idempotency_key=f"soak-{self._run_tag}-{self._serial}" if keyed else None,
            body=body, agent700_cost=cost, stripe_value=stripe_value(cost, self.stripe_value_decimals),
        )

    def _valid_body(self) -> dict:
        """A body that would be accepted (never sent as is by the invalid-request builders)."""
        return {
            "user_id": self.world.attributed_user_id,
            "organization_id": self._random.choice(self.world.organizations).id,
            "model_name": "gpt-4o-mini",
            "input_tokens": 1000,
            "output_tokens": 100,
            "service_name": self.world.service_name,
        }

    def _invalid_event_body(self) -> dict:
        body = self._valid_body()
        flaw = self._random.choice(("negative", "string", "missing", "unknown_field", "unknown_model", "float"))
        if flaw == "negative":
            body["input_tokens"] = -1
        elif flaw == "string":
            body["output_tokens"] = "100"
        elif flaw == "missing":
            del body["service_name"]
        elif flaw == "unknown_field":
            body["cost"] = "0.01"
        elif flaw == "unknown_model":
            body["model_name"] = "no-such-model"
        else:
            body["input_tokens"] = 10.5
        return body

    def _plan_invalid_request(self) -> tuple[str, str, bytes, dict[str, str], tuple[int, ...]]:
        """(name, path, body, headers, acceptable statuses) of a request that must be refused."""
        auth = {"Authorization": f"Bearer {self._credential()}", "Content-Type": "application/json"}
        kind = self._random.choice(
            ("invalid_event", "not_json", "json_array", "wrong_content_type", "no_credential", "bad_jwt",
             "unknown_app_password", "bad_idempotency_key", "empty_batch", "oversized_batch", "batch_not_a_list")
        )
        if kind == "invalid_event":
            return kind, USAGE_PATH, json.dumps(self._invalid_event_body()).encode(), auth, (422,)
        if kind == "not_json":
            return kind, USAGE_PATH, b'{"user_id": ', auth, (400,)
        if kind == "json_array":
            return kind, USAGE_PATH, json.dumps([self._valid_body()]).encode(), auth, (400,)
        if kind == "wrong_content_type":
            return kind, USAGE_PATH, json.dumps(self._valid_body()).encode(), auth | {"Content-Type": "text/plain"}, (415,)
        if kind == "no_credential":
            return kind, USAGE_PATH, json.dumps(self._valid_body()).encode(), {"Content-Type": "application/json"}, (401,)
        if kind == "bad_jwt":
            forged = self.world.jwt[:-4] + ("AAAA" if not self.world.jwt.endswith("AAAA") else "BBBB")
            headers = auth | {"Authorization": f"Bearer {forged}"}
            return kind, USAGE_PATH, json.dumps(self._valid_body()).encode(), headers, (401,)
        if kind == "unknown_app_password":
            headers = auth | {"Authorization": "Bearer app_a7_" + "x" * 40}
            return kind, USAGE_PATH, json.dumps(self._valid_body()).encode(), headers, (401,)
        if kind == "bad_idempotency_key":
            headers = auth | {"Idempotency-Key": "k" * 256}
            return kind, USAGE_PATH, json.dumps(self._valid_body()).encode(), headers, (422,)
        if kind == "empty_batch":
            return kind, BATCH_PATH, json.dumps({"events": []}).encode(), auth, (400, 422)
        if kind == "oversized_batch":
            return kind, BATCH_PATH, json.dumps({"events": [self._valid_body()] * 101}).encode(), auth, (400, 422)
        return kind, BATCH_PATH, json.dumps({"events": self._valid_body()}).encode(), auth, (400, 422)

    # -- sending (sender threads) --------------------------------------------------------

    def _http(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[Answer | ConnectionFailure, float]:
        return post(self.port, path, body, headers)

    def _send(self, kind: str, path: str, body: bytes, headers: dict[str, str], *, retry_when_ambiguous: bool):
        """Send until a 2xx or 4xx answer, retrying what is safe to retry.

        Returns (answer or None, whether an attempt was ambiguous).
        """
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        ambiguous = False
        attempt = 0
        while True:
            attempt += 1
            result, latency_ms = self._http(path, body, headers)
            if isinstance(result, Answer):
                self.ledger.attempt(kind, str(result.status), latency_ms)
                if result.status < 500:
                    return result, ambiguous
                if unknown_outcome(result):
                    self.ledger.unknown(len(unknown_ids(result)))
                    if not retry_when_ambiguous:
                        # Without a key a retry could bill it twice: the caller asks the
                        # status endpoint instead (_resolve).
                        return result, True
                    ambiguous = True
                retry_after = float(result.headers.get("retry-after", "0") or 0)
            else:
                self.ledger.attempt(kind, result.outcome, None)
                retry_after = 0.0
                if result.request_sent:
                    ambiguous = True
                    if not retry_when_ambiguous:
                        return None, True
            if time.monotonic() > deadline:
                return None, ambiguous
            backoff = min(MAX_BACKOFF_SECONDS, max(retry_after, 0.05 * 2**attempt))
            time.sleep(backoff * random.uniform(0.5, 1.0))

    def _resolve(self, event_id: str, credential: str) -> str | None:
        """What a careful client does with an unknown outcome and no key: ask the status
        endpoint until it answers. "accepted" (200), "not accepted" (404), or None if it
        did not answer within the retry budget."""
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_SECONDS)
            try:
                connection.request("GET", f"{USAGE_PATH}/{event_id}", headers={"Authorization": f"Bearer {credential}"})
                status = connection.getresponse().status
            except (OSError, http.client.HTTPException):
                status = None
            finally:
                connection.close()
            if status in (200, 404):
                verdict = "accepted" if status == 200 else "not accepted"
                self.ledger.resolved(verdict)
                return verdict
            time.sleep(0.5)
        self.ledger.resolved("unresolved")
        return None

    def _headers(self, credential: str, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _send_single(self, event: PlannedEvent, credential: str, *, resent: bool = False) -> None:
        if not resent:
            self.ledger.sending(1)
        body = json.dumps(event.body).encode()
        headers = self._headers(credential, event.idempotency_key)
        answer, ambiguous = self._send("single", USAGE_PATH, body, headers, retry_when_ambiguous=event.idempotency_key is not None)
        if answer is not None and unknown_outcome(answer):
            (event_id,) = unknown_ids(answer)
            self.ledger.finished("single", "unknown")
            verdict = self._resolve(event_id, credential)
            if verdict == "accepted":
                self.ledger.accept(event, event_id)
            elif verdict == "not accepted":
                self._send_single(event, credential, resent=True)
            else:
                self.ledger.maybe_accepted(event)
            return
        if answer is None:
            if ambiguous:
                self.ledger.maybe_accepted(event)
            self.ledger.finished("single", "ambiguous" if ambiguous else "given up")
            return
        self.ledger.finished("single", str(answer.status))
        payload = answer.json() or {}
        # 202 for a new event; 200 only when an earlier, unanswered attempt did get through.
        if answer.status == 202 or (answer.status == 200 and ambiguous):
            self.ledger.accept(event, payload["id"])
            if answer.status == 200:
                self.ledger.answer_was_lost()
            if event.idempotency_key is not None:
                with self._replayable_lock:
                    self._replayable.append(("single", body, headers, [payload["id"]], event))
        else:
            self.ledger.problem(
                self.ledger.unexpected_answers, f"single event answered {answer.status}: {answer.body[:300]!r}"
            )

    def _send_batch(self, slots: list[tuple[str, object]], credential: str, *, resent: bool = False) -> None:
        """``resent``: these keyed events were in a batch whose answer was lost."""

        def wire(slot):
            kind, item = slot
            if kind == "invalid":
                return item
            body = dict(item.body)
            if item.idempotency_key is not None:
                body["idempotency_key"] = item.idempotency_key
            return body

        events = [item for kind, item in slots if kind == "valid"]
        if not resent:
            self.ledger.sending(len(events))
        all_keyed = all(event.idempotency_key is not None for event in events)
        body = json.dumps({"events": [wire(slot) for slot in slots]}).encode()
        headers = self._headers(credential)
        answer, ambiguous = self._send("batch", BATCH_PATH, body, headers, retry_when_ambiguous=all_keyed)
        if answer is None:
            self.ledger.finished("batch", "ambiguous" if ambiguous else "given up")
            if ambiguous:
                for event in events:
                    self.ledger.maybe_accepted(event)
                keyed = [slot for slot in slots if slot[0] == "valid" and slot[1].idempotency_key is not None]
                if keyed and not all_keyed:
                    # What a careful client does: the keyed events are safe to send again,
                    # and the answer says which of them did get through.
                    self._send_batch(keyed, credential, resent=True)
            return
        if unknown_outcome(answer):
            self.ledger.finished("batch", "unknown")
            again = []
            for slot, result in zip(slots, (answer.json() or {})["results"], strict=True):
                if slot[0] != "valid" or result.get("status") != "unknown":
                    continue
                verdict = self._resolve(result["id"], credential)
                if verdict == "accepted":
                    self.ledger.accept(slot[1], result["id"])
                elif verdict == "not accepted":
                    again.append(slot)
                else:
                    self.ledger.maybe_accepted(slot[1])
            if again:
                self._send_batch(again, credential, resent=True)
            return
        self.ledger.finished("batch", str(answer.status))
        results = (answer.json() or {}).get("results") if answer.status == 200 else None
        if not isinstance(results, list) or len(results) != len(slots):
            self.ledger.problem(self.ledger.unexpected_answers, f"batch answered {answer.status}: {answer.body[:300]!r}")
            return
        expected_results = []
        for slot, result in zip(slots, results, strict=True):
            kind, item = slot
            if kind == "invalid":
                if result.get("status") != "rejected":
                    self.ledger.problem(self.ledger.invalid_accepted, f"invalid batch event answered {result}")
                expected_results.append(("rejected", None))
                continue
            # "duplicate" only when an earlier, unanswered attempt did get through.
            acceptable = ("queued", "duplicate") if ambiguous or resent else ("queued",)
            if result.get("status") in acceptable and result.get("id"):
                self.ledger.accept(item, result["id"])
                if result["status"] == "duplicate":
                    self.ledger.answer_was_lost()
                expected_results.append(("duplicate", result["id"]))
            else:
                self.ledger.problem(self.ledger.unexpected_answers, f"valid batch event answered {result}")
                expected_results.append((result.get("status"), result.get("id")))
        if all_keyed:
            with self._replayable_lock:
                self._replayable.append(("batch", body, headers, expected_results, None))

    def _pick_replayable(self):
        with self._replayable_lock:
            if not self._replayable:
                return None
            return random.choice(self._replayable)

    def _send_replay(self) -> None:
        """The same request again, same keys, same body: the same ids must come back."""
        replayable = self._pick_replayable()
        if replayable is None:
            return
        kind, body, headers, expected, _ = replayable
        path = USAGE_PATH if kind == "single" else BATCH_PATH
        answer, _ = self._send(f"replay_{kind}", path, body, headers, retry_when_ambiguous=True)
        outcome = "given up" if answer is None else str(answer.status)
        self.ledger.finished(f"replay_{kind}", outcome)
        if answer is None:
            return
        payload = answer.json() or {}
        if kind == "single":
            if answer.status != 200 or payload.get("id") != expected[0]:
                self.ledger.problem(
                    self.ledger.idempotency_mismatches,
                    f"replay of {expected[0]} answered {answer.status} {payload.get('id')}",
                )
            return
        results = payload.get("results") if answer.status == 200 else None
        got = [(r.get("status"), r.get("id")) for r in results] if isinstance(results, list) else None
        if got != expected:
            self.ledger.problem(self.ledger.idempotency_mismatches, f"batch replay answered {answer.status}: {got} != {expected}")

    def _send_conflict(self) -> None:
        """An earlier key with another body: 409, and nothing new billed."""
        replayable = self._pick_replayable()
        if replayable is None or replayable[0] != "single":
            return
        _, body, headers, expected, event = replayable
        changed = dict(event.body, input_tokens=event.input_tokens + 1 if event.input_tokens < MAX_TOKENS else 0)
        answer, _ = self._send("conflict", USAGE_PATH, json.dumps(changed).encode(), headers, retry_when_ambiguous=True)
        self.ledger.finished("conflict", "given up" if answer is None else str(answer.status))
        if answer is not None and answer.status != 409:
            self.ledger.problem(self.ledger.invalid_accepted, f"key reuse with another body answered {answer.status}")

    def _send_invalid(self, name: str, path: str, body: bytes, headers: dict[str, str], acceptable: tuple[int, ...]) -> None:
        # Retried like any request on 5xx: a refused request may be sent again, and a
        # request that must be refused can never be billed twice.
        answer, _ = self._send("invalid", path, body, headers, retry_when_ambiguous=True)
        self.ledger.finished("invalid", "given up" if answer is None else str(answer.status))
        if answer is None:
            return
        if 200 <= answer.status < 300:
            self.ledger.problem(self.ledger.invalid_accepted, f"{name} answered {answer.status}: {answer.body[:200]!r}")
        elif answer.status not in acceptable:
            self.ledger.problem(self.ledger.unexpected_answers, f"{name} answered {answer.status}, expected {acceptable}")
