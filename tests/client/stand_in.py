"""A stand-in of the billing API on a real HTTP server in a thread, for the client's
tests: what the client does on the wire, without the service's processes.

It keeps Idempotency-Keys as the service does (same key and body: the same event, 200
or ``duplicate``; other body: 409 or ``rejected``), and counts what it accepted, so a
test can check that each event was accepted exactly once. Faults are scripted per
request (``then``): an answer as given, the "outcome unknown" 503, a dropped
connection, or no answer at all; each of the last three may first accept the events
(the service took them, the caller never heard so) or not.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "app_a7_stand_in_token"
USAGE_PATH = "/api/billing/external-usage"
BATCH_PATH = f"{USAGE_PATH}/batch"
UNKNOWN_MODEL = "no-such-model"  # refused (422 / rejected) as an unknown reference
HANG_LIMIT_SECONDS = 60


@dataclass(frozen=True)
class Reply:
    """Answer this, accepting nothing."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Unknown:
    """The "outcome unknown" 503 (``Retry-After``), after accepting the events or not."""

    accept: bool
    retry_after: str = "0"


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer, after accepting the events or not."""

    accept: bool


@dataclass(frozen=True)
class Hang:
    """Answer nothing until the test ends, after accepting the events or not."""

    accept: bool


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Event:
    id: uuid.UUID
    key: str | None
    body: dict


class StandInService:
    def __init__(self) -> None:
        self.script: collections.deque = collections.deque()
        self.requests: list[Seen] = []
        self.events: dict[uuid.UUID, Event] = {}
        self._by_key: dict[str, tuple[uuid.UUID, str]] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def then(self, *actions: Reply | Unknown | Drop | Hang | None) -> StandInService:
        """Answer the next requests so, one action each, in order (``None``: as the
        service would); after them, as the service would."""
        self.script.extend(actions)
        return self

    def posted(self, path: str = USAGE_PATH) -> list[Seen]:
        return [seen for seen in self.requests if seen.method == "POST" and seen.path == path]

    def accepted_keys(self) -> collections.Counter:
        """How many events were accepted under each key: exactly once means all 1."""
        return collections.Counter(event.key for event in self.events.values())

    # --- what the service does -----------------------------------------------------------

    def accept_event(self, body: dict, key: str | None) -> tuple[str, uuid.UUID | None]:
        """("queued" | "duplicate" | "conflict", id) for a valid event."""
        fingerprint = json.dumps({k: v for k, v in body.items() if k != "idempotency_key"}, sort_keys=True)
        with self._lock:
            if key is not None and key in self._by_key:
                earlier_id, earlier_fingerprint = self._by_key[key]
                return ("duplicate", earlier_id) if earlier_fingerprint == fingerprint else ("conflict", None)
            event = Event(uuid.uuid4(), key, body)
            self.events[event.id] = event
            if key is not None:
                self._by_key[key] = (event.id, fingerprint)
            return "queued", event.id

    def next_action(self):
        with self._lock:
            return self.script.popleft() if self.script else None

    def hang(self) -> None:
        self._released.wait(HANG_LIMIT_SECONDS)


_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


def _refused(body: Any) -> list[dict] | None:
    """The stand-in's validation: an object naming a model it knows."""
    if not isinstance(body, dict):
        return [{"field": "body", "message": "Must be an object."}]
    if body.get("model_name") == UNKNOWN_MODEL:
        return [{"field": "model_name", "message": f"No price for model {UNKNOWN_MODEL}."}]
    return None


def _handler(service: StandInService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's pool expects

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _read(self) -> Any:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            service.requests.append(
                Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                     json.loads(raw) if raw else None, time.monotonic())
            )
            return json.loads(raw) if raw else None

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                return True
            self._answer(401, {"error": "Missing or invalid credentials."}, {"WWW-Authenticate": "Bearer"})
            return False

        def _fault(self, action, accept) -> bool:
            """Carry out a scripted fault (``accept`` takes the events); True if one was."""
            if isinstance(action, Reply):
                self._answer(action.status, action.body, action.headers)
                return True
            if isinstance(action, (Drop, Hang)):
                if action.accept:
                    accept()
                if isinstance(action, Hang):
                    service.hang()
                self.close_connection = True
                return True
            return False

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self._read()
            if not self._authorized():
                return
            action = service.next_action()
            if self.path == USAGE_PATH:
                self._record(body, action)
            elif self.path == BATCH_PATH:
                self._record_batch(body, action)
            else:
                self._answer(404, {"error": "No such resource."})

        def _record(self, body: Any, action) -> None:
            key = self.headers.get("Idempotency-Key")
            assert key is None or _KEY.match(key), key
            problems = _refused(body)
            outcome: list = []
            if self._fault(action, lambda: outcome.append(service.accept_event(body, key))):
                return
            if problems:
                self._answer(422, {"error": "The usage event is invalid.", "details": problems})
                return
            if isinstance(action, Unknown):
                status, event_id = service.accept_event(body, key) if action.accept else ("queued", uuid.uuid4())
                self._answer(503, {"error": "The billing queue may or may not have taken this event. Retry with the same Idempotency-Key.",
                                   "status": "unknown", "id": str(event_id)}, {"Retry-After": action.retry_after})
                return
            status, event_id = service.accept_event(body, key)
            if status == "conflict":
                self._answer(409, {"error": "This Idempotency-Key was already used with a different body."})
            elif status == "duplicate":
                self._answer(200, {"id": str(event_id), "status": "queued"})
            else:
                self._answer(202, {"id": str(event_id), "status": "queued"}, {"Location": f"{USAGE_PATH}/{event_id}"})

        def _record_batch(self, body: Any, action) -> None:
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list) or not 1 <= len(events) <= 100:
                self._answer(422, {"error": "The batch is invalid.", "details": [{"field": "events", "message": "1 to 100."}]})
                return
            valid = [(index, item) for index, item in enumerate(events) if not _refused(item)]
            rejected = {index: {"index": index, "status": "rejected", "error": "The usage event is invalid.", "details": _refused(item)}
                        for index, item in enumerate(events) if _refused(item)}

            def accept_all():
                return {index: service.accept_event(item, item.get("idempotency_key")) for index, item in valid}

            if self._fault(action, accept_all):
                return
            if isinstance(action, Unknown):
                ids = {index: event_id for index, (_, event_id) in accept_all().items()} if action.accept else {index: uuid.uuid4() for index, _ in valid}
                results = [rejected.get(index) or {"index": index, "id": str(ids[index]), "status": "unknown"} for index in range(len(events))]
                self._answer(503, {"error": "The billing queue may or may not have taken these events.", "status": "unknown", "results": results},
                             {"Retry-After": action.retry_after})
                return
            outcomes = accept_all()
            results = []
            for index in range(len(events)):
                if index in rejected:
                    results.append(rejected[index])
                    continue
                status, event_id = outcomes[index]
                if status == "conflict":
                    results.append({"index": index, "status": "rejected", "error": "This idempotency_key was already used with a different body."})
                else:
                    results.append({"index": index, "id": str(event_id), "status": status})
            self._answer(200, {"results": results})

        def do_GET(self) -> None:  # noqa: N802
            self._read()
            if not self._authorized():
                return
            action = service.next_action()
            if self._fault(action, lambda: None):
                return
            event_id = self.path.rsplit("/", 1)[-1]
            event = service.events.get(uuid.UUID(event_id))
            if event is None:
                self._answer(404, {"error": "No usage event with this id."})
                return
            self._answer(200, {
                "id": str(event.id), "status": "reported", "user_id": event.body["user_id"],
                "organization_id": event.body["organization_id"], "service_name": event.body["service_name"],
                "model_name": event.body["model_name"], "input_tokens": event.body["input_tokens"],
                "output_tokens": event.body["output_tokens"], "source": event.body.get("source", "external_api"),
                "occurred_at": "2025-01-31T09:30:00Z", "service_cost": "0.000384000000000000",
                "agent700_cost": "0.000768000000000001", "error": None,
                "stripe": {"identifier": str(event.id), "value": 768, "reported_at": "2025-01-31T09:30:02.123456Z"},
            })

    return Handler
