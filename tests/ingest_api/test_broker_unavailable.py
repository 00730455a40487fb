"""The queue unavailable: 503 with ``Retry-After``, in bounded time, and nothing accepted.

A 2xx means the event will be billed exactly once; anything else means nothing was
recorded. So a broker that refuses, hangs or fails part-way leaves no event queued and
no Idempotency-Key claimed: the caller's retry with the same key is a fresh 202.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import redis

from ingest_api import create_app
from shared import intake
from tests.support.billing import BATCH_URL, URL
from tests.support.error_answers import assert_error

BOUND_SECONDS = 2.0  # "within about 2 seconds"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_with_broker(settings):
    """Builds apps on the test database with another broker URL; closes their clients."""
    apps = []

    def build(broker_url: str, **changes):
        app = create_app(settings.replace(broker_url=broker_url, **changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["intake"].close()


@pytest.fixture
def hanging_broker():
    """A TCP server that accepts connections and never answers a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"redis://127.0.0.1:{server.getsockname()[1]}/0", connections=connections)
    stop.set()
    thread.join(timeout=5)
    server.close()
    for connection in connections:
        connection.close()


class LosingProxy:
    """A TCP proxy to the real Redis that can lose a reply: with ``lose_next_reply`` set,
    the next EVALSHA reaches Redis and runs, and the connection is then closed before its
    reply is relayed (what a Redis stopped between running a command and answering it
    does to a client). With ``swallow_next_publish`` the next EVALSHA never reaches Redis
    though the client sent it. ``then_refuse_for`` keeps Redis unreachable that long after
    either. ``start_after`` delays listening: a broker that refuses at first."""

    def __init__(self, upstream_url: str, start_after: float = 0.0):
        upstream = redis.connection.parse_url(upstream_url)
        self.upstream = (upstream.get("host", "127.0.0.1"), upstream.get("port", 6379))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/{upstream.get('db', 0)}"
        self.lose_next_reply = False
        self.swallow_next_publish = False
        self.then_refuse_for = 0.0  # after losing a reply: refuse connections this long
        self.refusing_until = 0.0
        self.lost_replies = 0
        self.connections = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, args=(start_after,), daemon=True)
        self._thread.start()

    def _serve(self, start_after: float) -> None:
        if self._stop.wait(start_after):
            return
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.05)
        self._sockets.append(server)
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            if time.monotonic() < self.refusing_until:
                client.close()  # Redis is unreachable: the connection goes nowhere
                continue
            self.connections += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        self._sockets += [client, upstream]
        try:
            while not self._stop.is_set():
                request = client.recv(65536)
                if not request:
                    return
                if self.swallow_next_publish and b"EVALSHA" in request.upper():
                    self.swallow_next_publish = False
                    self.refusing_until = time.monotonic() + self.then_refuse_for
                    return  # it never reached Redis; the caller cannot know that
                upstream.sendall(request)
                reply = upstream.recv(65536)
                if self.lose_next_reply and b"EVALSHA" in request.upper():
                    self.lose_next_reply = False
                    self.lost_replies += 1
                    self.refusing_until = time.monotonic() + self.then_refuse_for
                    return  # it ran; the caller never hears so
                client.sendall(reply)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def losing_proxy(broker_url):
    proxies = []

    def build(**options) -> LosingProxy:
        proxies.append(LosingProxy(broker_url, **options))
        return proxies[-1]

    yield build
    for proxy in proxies:
        proxy.close()


def assert_unavailable(response, elapsed: float | None = None, bound: float = BOUND_SECONDS) -> None:
    assert_error(response, 503)
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, response.headers
    if elapsed is not None:
        assert elapsed < bound, elapsed


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_broker_down_is_503_at_once_and_nothing_is_queued(billing, app_with_broker):
    down = app_with_broker(f"redis://127.0.0.1:{free_port()}/0").test_client()

    response, elapsed = timed(lambda: billing.post(client=down, idempotency_key="down-1"))
    assert_unavailable(response, elapsed)
    response, elapsed = timed(lambda: down.post(BATCH_URL, json={"events": [billing.body()]}, headers=billing.headers()))
    assert_unavailable(response, elapsed)

    billing.assert_nothing_queued()


def assert_outcome_unknown(response, event_ids: list[str] | None = None) -> dict:
    """503, Retry-After, and a body that says the outcome is unknown and names the ids."""
    assert response.status_code == 503, response.get_json()
    assert response.headers.get("Retry-After", "").isdigit(), response.headers
    body = response.get_json()
    assert body["status"] == "unknown" and "unknown" in body["error"], body
    if "results" in body:
        attempted = [result["id"] for result in body["results"] if result["status"] == "unknown"]
    else:
        attempted = [body["id"]]
        assert response.headers["Location"].endswith(body["id"]), response.headers
    for event_id in attempted:
        uuid.UUID(event_id)
    if event_ids is not None:
        assert attempted == event_ids, body
    return body


def test_broker_hanging_is_503_within_the_bound(billing, app_with_broker, hanging_broker):
    """A broker that accepts the connection and never answers: the handshake times out
    before the publish is sent, so "nothing was accepted" is certain, within
    ENQUEUE_TIMEOUT_SECONDS."""
    hung = app_with_broker(hanging_broker.url, enqueue_timeout_seconds=1.0).test_client()

    response, elapsed = timed(lambda: billing.post(client=hung, idempotency_key="hang-1"))
    assert hanging_broker.connections, "the request never reached the broker"
    assert_unavailable(response, elapsed, bound=1.5)

    response, elapsed = timed(lambda: hung.post(BATCH_URL, json={"events": [billing.body()]}, headers=billing.headers()))
    assert_unavailable(response, elapsed, bound=1.5)

    billing.assert_nothing_queued()


def test_a_key_whose_enqueue_failed_is_free_for_the_retry(billing, app_with_broker):
    down = app_with_broker(f"redis://127.0.0.1:{free_port()}/0").test_client()
    assert billing.post(client=down, idempotency_key="retry-me").status_code == 503

    # The broker is back (the test's own, working one).
    response = billing.post(idempotency_key="retry-me")
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert response.get_json() == {"id": str(event.id), "status": "queued"}


def test_an_enqueue_failing_inside_the_broker_leaves_no_claim_and_no_status_record(billing, broker_url):
    """The broker answers but refuses the append (here: the stream key holds a string):
    the request is a 503, and neither the Idempotency-Key nor a "queued" status record
    is left behind for an event that is not on the stream."""
    broker = redis.Redis.from_url(broker_url)
    try:
        broker.set(intake.STREAM, "not a stream")
        before = set(broker.keys("billing:*"))

        response = billing.post(idempotency_key="half-done")
        assert_unavailable(response)
        batch = billing.post_batch([billing.body() | {"idempotency_key": "half-done-2"}])
        assert_unavailable(batch)
        assert set(broker.keys("billing:*")) == before

        broker.delete(intake.STREAM)
        retry = billing.post(idempotency_key="half-done")
        assert retry.status_code == 202, retry.get_json()
        (event,) = billing.queued()
        assert retry.get_json()["id"] == str(event.id)
        assert billing.get(event.id).get_json()["status"] == "queued"
    finally:
        broker.close()


@pytest.mark.parametrize("idempotency_key", [None, "lost-reply"], ids=["without-key", "with-key"])
def test_a_publish_whose_reply_was_lost_is_retried_and_queued_once(billing, app_with_broker, losing_proxy, idempotency_key):
    """The script ran, then the connection broke before its reply arrived: the client
    retries on a new connection, the script recognises its own event, and the caller
    gets the 202 of a new event (not a 503 for an accepted event, not a "duplicate")."""
    proxy = losing_proxy()
    client = app_with_broker(proxy.url).test_client()
    assert billing.post(client=client).status_code == 202  # a connection is open
    proxy.lose_next_reply = True

    response = billing.post(client=client, idempotency_key=idempotency_key, body=billing.body(input_tokens=4242))

    assert proxy.lost_replies == 1
    assert response.status_code == 202, response.get_json()
    event_id = response.get_json()["id"]
    assert [e.id for e in billing.queued() if e.input_tokens == 4242] == [uuid.UUID(event_id)]
    assert billing.get(event_id).get_json()["status"] == "queued"
    if idempotency_key:
        replay = billing.post(client=client, idempotency_key=idempotency_key, body=billing.body(input_tokens=4242))
        assert (replay.status_code, replay.get_json()["id"]) == (200, event_id)


def test_a_broker_restarting_for_a_moment_costs_a_slower_answer_not_a_503(billing, app_with_broker, losing_proxy):
    proxy = losing_proxy(start_after=0.2)  # refuses connections for the first 0.2 s
    client = app_with_broker(proxy.url).test_client()

    response, elapsed = timed(lambda: billing.post(client=client))

    assert response.status_code == 202, response.get_json()
    assert 0.15 < elapsed < BOUND_SECONDS
    (event,) = billing.queued()
    assert response.get_json()["id"] == str(event.id)


def test_the_status_of_a_queued_event_is_503_not_404_while_the_broker_is_down(billing, app_with_broker):
    accepted = billing.post()
    assert accepted.status_code == 202
    event_id = accepted.get_json()["id"]

    down = app_with_broker(f"redis://127.0.0.1:{free_port()}/0").test_client()
    response, elapsed = timed(lambda: down.get(f"{URL}/{event_id}", headers=billing.headers()))
    assert_unavailable(response, elapsed)

    # Back up: it is there, queued.
    assert billing.get(event_id).get_json()["status"] == "queued"


def test_a_broker_that_forgot_the_publish_script_still_accepts_each_event_once(billing, broker_url):
    assert billing.post().status_code == 202
    client = redis.Redis.from_url(broker_url)
    client.script_flush()  # what a Redis restart does to loaded scripts
    client.close()

    assert billing.post(idempotency_key="after-flush").status_code == 202
    assert billing.post(idempotency_key="after-flush").status_code == 200
    assert len(billing.queued()) == 2


def test_postgresql_unreachable_before_the_caller_is_cached_is_503_not_500(billing, settings):
    app = create_app(settings.replace(database_url="postgresql+psycopg2://postgres@127.0.0.1:1/none"))
    response = app.test_client().post(URL, json=billing.body(), headers={"Authorization": f"Bearer {billing.app_password}"})

    assert_error(response, 503)
    assert response.headers["Retry-After"]
    billing.assert_nothing_queued()


# --- an outcome only Redis knows: "unknown", with the ids, resolved later -----------------------


@pytest.fixture
def losing_broker(billing, app_with_broker, losing_proxy):
    """An app whose Redis loses a publish's reply (or the publish itself) and then stays
    unreachable for longer than the publish may wait (ENQUEUE_TIMEOUT_SECONDS = 1)."""
    proxy = losing_proxy()
    proxy.then_refuse_for = 2.5
    client = app_with_broker(proxy.url, enqueue_timeout_seconds=1.0).test_client()
    assert billing.post(client=client).status_code == 202  # a connection is open
    return proxy, client


def wait_reachable(proxy) -> None:
    while time.monotonic() < proxy.refusing_until:
        time.sleep(0.05)


@pytest.mark.parametrize("idempotency_key", [None, "lost-and-unreachable"], ids=["without-key", "with-key"])
def test_a_lost_reply_then_no_redis_is_an_unknown_outcome_the_status_resolves(billing, losing_broker, idempotency_key):
    """The script ran, its reply was lost, and Redis stayed unreachable past the bound:
    the answer says "unknown" and names the id. (Before: a 503 "nothing was recorded" for
    an event that was accepted.)"""
    proxy, client = losing_broker
    proxy.lose_next_reply = True
    started = time.monotonic()

    response = billing.post(client=client, idempotency_key=idempotency_key, body=billing.body(input_tokens=4242))

    assert time.monotonic() - started < 1.0 + 0.5
    body = assert_outcome_unknown(response)
    wait_reachable(proxy)
    status = billing.get(body["id"])
    assert (status.status_code, status.get_json()["status"]) == (200, "queued")
    assert [str(e.id) for e in billing.queued() if e.input_tokens == 4242] == [body["id"]]
    if idempotency_key:
        retry = billing.post(client=client, idempotency_key=idempotency_key, body=billing.body(input_tokens=4242))
        assert (retry.status_code, retry.get_json()["id"]) == (200, body["id"])
        assert len([e for e in billing.queued() if e.input_tokens == 4242]) == 1  # billed once


def test_a_publish_that_never_reached_redis_is_unknown_then_404(billing, losing_broker):
    proxy, client = losing_broker
    proxy.swallow_next_publish = True

    response = billing.post(client=client, body=billing.body(input_tokens=4343))

    body = assert_outcome_unknown(response)
    wait_reachable(proxy)
    assert billing.get(body["id"]).status_code == 404
    assert [e for e in billing.queued() if e.input_tokens == 4343] == []


def test_a_keyed_retry_after_an_unknown_outcome_that_was_not_accepted_is_a_new_event(billing, losing_broker):
    proxy, client = losing_broker
    proxy.swallow_next_publish = True
    unknown = assert_outcome_unknown(billing.post(client=client, idempotency_key="never-landed"))
    wait_reachable(proxy)

    retry = billing.post(client=client, idempotency_key="never-landed")

    assert retry.status_code == 202 and retry.get_json()["id"] != unknown["id"]
    assert [str(e.id) for e in billing.queued() if e.idempotency_key == "never-landed"] == [retry.get_json()["id"]]


def test_a_batch_whose_reply_was_lost_says_unknown_for_each_event(billing, losing_broker):
    proxy, client = losing_broker
    proxy.lose_next_reply = True
    events = [billing.body(input_tokens=5000 + n) for n in range(3)] + [billing.body(source="")]

    response = client.post(BATCH_URL, json={"events": events}, headers=billing.headers())

    body = assert_outcome_unknown(response)
    statuses = [result["status"] for result in body["results"]]
    assert statuses == ["unknown", "unknown", "unknown", "rejected"]
    wait_reachable(proxy)
    for result in body["results"][:3]:
        assert billing.get(result["id"]).get_json()["status"] == "queued"


@pytest.mark.parametrize("redis_back_within_the_bound", [True, False], ids=["back-in-time", "away-too-long"])
def test_a_reply_lost_in_the_middle_of_a_group_answers_each_request_with_its_own_id(
    billing, app_with_broker, losing_proxy, redis_back_within_the_bound
):
    """Three requests share one script call (the group's window holds it open for them),
    and its reply is lost. Back in time, each is the 202 of its own event; away too long,
    each says "unknown" with its own id, and each was in fact accepted, once."""
    proxy = losing_proxy()
    proxy.then_refuse_for = 0.3 if redis_back_within_the_bound else 2.5
    app = app_with_broker(proxy.url, enqueue_timeout_seconds=1.5, accept_group_window_seconds=0.3)
    assert billing.post(client=app.test_client()).status_code == 202  # a connection is open
    proxy.lose_next_reply = True
    bodies = [billing.body(input_tokens=7000 + n) for n in range(3)]

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: billing.post(client=app.test_client(), body=body), bodies))

    assert proxy.lost_replies == 1  # the three were in the call whose reply was lost
    if redis_back_within_the_bound:
        assert [r.status_code for r in responses] == [202] * 3, [r.get_json() for r in responses]
        ids = [r.get_json()["id"] for r in responses]
    else:
        ids = [assert_outcome_unknown(r)["id"] for r in responses]
        wait_reachable(proxy)
    queued = {e.input_tokens: str(e.id) for e in billing.queued() if e.input_tokens >= 7000}
    assert queued == {body["input_tokens"]: event_id for body, event_id in zip(bodies, ids, strict=True)}
    for event_id in ids:
        assert billing.get(event_id).get_json()["status"] == "queued"
