"""Shared fixtures: a real PostgreSQL database and Redis database of this run's own, the
local Stripe-compatible server, the Flask app, and small factories for billing data.

Servers: the configured ones (``TEST_DATABASE_URL``/``DATABASE_URL``,
``TEST_BROKER_URL``/``CELERY_BROKER_URL``) when set, else this machine's defaults on
127.0.0.1 when reachable (``devtools.servers``), else embedded ones under ``var/test``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid

# Multiprocess metrics of this run (pytest and the workers it starts) in a directory of
# its own, settled before shared.metrics is first imported.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="a700-test-metrics-"))

import pytest
import redis
import sqlalchemy as sa

from devtools import servers
from shared import db, embedded, migrations, models
from shared.config import Settings
from tests.support.billing import METER_EVENT_NAME, TEST_JWT_SECRET, Factory, World, build_world_with_every_price
from tests.support.database import RolledBack
from tests.support.intake_stream import redis_client
from tests.support.operator_commands import OperatorCliRunner

TEST_SERVERS_DIR = embedded.VAR_DIR / "test"


@pytest.fixture(scope="session")
def postgres_server_url():
    """A PostgreSQL server for this run: the configured one or this machine's, else an
    embedded one under var/test that is stopped when the run ends."""
    url = servers.postgres_server_url()
    if url is not None:
        yield url
        return
    pgdata = TEST_SERVERS_DIR / "postgres"
    embedded.postgres_server(pgdata)
    try:
        yield embedded.postgres_admin_url(pgdata)
    finally:
        embedded.stop_postgres(pgdata)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str):
    """A database of this run's own, migrated to head, dropped at the end."""
    with servers.migrated_database(postgres_server_url, "a700_test_") as url:
        yield url
        db.engine_for(url).dispose()


@pytest.fixture(scope="session")
def redis_server_url():
    """A Redis server for this run: the configured one or this machine's, else one under
    var/test that is stopped when the run ends."""
    url = servers.redis_server_url()
    if url is not None:
        yield url
        return
    directory, port = TEST_SERVERS_DIR / "redis", embedded.free_port()
    embedded.start_redis(directory, port, appendonly=False)
    try:
        yield embedded.redis_url_for(port, None)
    finally:
        embedded.stop_redis(directory)


@pytest.fixture(scope="session")
def broker_url(redis_server_url: str):
    """A Redis logical database no other test run is using, claimed for this run."""
    server_url = redis_server_url
    base = server_url.rsplit("/", 1)[0] if server_url.count("/") > 2 else server_url
    claim = f"agent700:test-run:{uuid.uuid4().hex}"
    for index in range(1, 16):
        client = redis.Redis.from_url(f"{base}/{index}")
        if client.set("agent700:test-claim", claim, nx=True, ex=3600) and client.dbsize() == 1:
            client.flushdb()
            client.set("agent700:test-claim", claim, ex=3600)
            yield f"{base}/{index}"
            client.flushdb()
            client.close()
            return
        client.close()
    pytest.fail("no free Redis logical database (1-15) for this test run")


@pytest.fixture(scope="session", autouse=True)
def process_settings(database_url: str, broker_url: str):
    """This process's own settings (``get_settings()``: what the shared Celery app sends
    wake-ups with) point at this run's servers, as a deployed process's environment does."""
    from shared.config import LOCAL_STRIPE_API_KEY, LOCAL_STRIPE_URL, get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", database_url)
        patch.setenv("CELERY_BROKER_URL", broker_url)
        patch.setenv("JWT_SECRET", TEST_JWT_SECRET)
        # Required with the URLs set; the local Stripe server's address, as it was when
        # the key could be left out.
        patch.setenv("STRIPE_API_KEY", LOCAL_STRIPE_API_KEY)
        patch.setenv("STRIPE_API_BASE", LOCAL_STRIPE_URL)
        patch.setenv("STRIPE_METER_EVENTS_BASE", LOCAL_STRIPE_URL)
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def stripe_server():
    """The project's local Stripe-compatible server, on a free port, for the whole run.

    It judges v2 meter events as Stripe does, asynchronously; here by default before the
    stream call answers (a delay of 0), so a test that does not look at the delay need
    not wait for it. Tests of the asynchronous path set a delay of their own."""
    from local_stripe.testing import serve_in_thread

    server = serve_in_thread(validation_delay_seconds=0)
    yield server
    server.stop()


@pytest.fixture
def stripe(stripe_server):
    """The local Stripe server, cleared for this test, with the billing meter set up as
    ``stripe meter ensure`` sets it up (customers come with the organizations)."""
    stripe_server.reset()
    stripe_server.create_meter(METER_EVENT_NAME)
    return stripe_server


def _truncate_all(database_url: str) -> None:
    tables = [t.name for t in models.Base.metadata.sorted_tables if t.name != "roles"]
    with db.engine_for(database_url).begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} CASCADE")


@pytest.fixture(scope="session")
def rollback_engine(database_url: str):
    """The engine whose connections hold the tests' rolled-back transactions."""
    engine = sa.create_engine(database_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def committed_database(database_url: str):
    """Requested by a test (or a fixture) whose data must really be committed: read by
    other processes (workers, gunicorn, Flower, the local run) or by threads and
    connections that must not share one transaction (concurrent callers, a reporter racing
    another). It starts from the empty tables every test leaves; they are emptied again
    when it ends (after its processes are stopped: they were started after this)."""
    yield
    _truncate_all(database_url)


@pytest.fixture
def database(request, database_url: str, rollback_engine):
    """The test's database, empty at its start. By default all of the test's work is one
    transaction rolled back at its end (``tests.support.database``): ``shared.db`` hands the
    code under test sessions and connections inside it. With ``committed_database``
    requested, the real engine and commits."""
    if "committed_database" in request.fixturenames:
        request.getfixturevalue("committed_database")
        yield
        return
    transaction = RolledBack(rollback_engine, database_url)
    engine_for, session_factory = db.engine_for, db.session_factory
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db, "engine_for", lambda url: transaction.engine if url == database_url else engine_for(url))
        patch.setattr(db, "session_factory", lambda url: transaction.sessions if url == database_url else session_factory(url))
        try:
            yield
        finally:
            transaction.roll_back()


@pytest.fixture
def clean_state(database, broker_url: str):
    """Every test starts from empty tables (``database``) and an empty Redis database."""
    client = redis.Redis.from_url(broker_url)
    claim = client.get("agent700:test-claim")
    client.flushdb()
    client.set("agent700:test-claim", claim, ex=3600)
    client.close()


@pytest.fixture
def settings(database_url: str, broker_url: str, stripe_server, clean_state) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        jwt_secret=TEST_JWT_SECRET,
        stripe_api_key="sk_test_agent700_tests",
        stripe_api_base=stripe_server.url,
        stripe_meter_events_base=stripe_server.url,
        stripe_meter_event_name=METER_EVENT_NAME,
        stripe_value_decimals=6,
        flower_basic_auth="operator:test-password",
        port=8000,
        catalog_cache_seconds=0.0,
    )


@pytest.fixture
def app(settings: Settings):
    from ingest_api import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()




@pytest.fixture
def runner(app):
    return OperatorCliRunner(app)


@pytest.fixture
def session(settings: Settings):
    """A session for arranging and asserting; each ``with session.begin()`` commits."""
    with db.session_factory(settings.database_url)() as session:
        yield session


@pytest.fixture
def factory(settings: Settings, stripe) -> Factory:
    return Factory(settings, stripe)


@pytest.fixture
def world(factory) -> World:
    """The billable world (``tests.support.billing``) with prices for every model of ``PRICES``."""
    return build_world_with_every_price(factory)


@pytest.fixture
def private_postgres():
    """A running embedded PostgreSQL of the test's own (``tests.support.service_processes``),
    which it may stop, start and restart; stopped and removed at teardown."""
    from tests.support.service_processes import private_postgres_server

    with private_postgres_server() as postgres:
        yield postgres
        db.engine_for(postgres.admin_url).dispose()


@pytest.fixture
def private_redis(tmp_path):
    """A running Redis of the test's own (AOF off), killed at teardown."""
    from tests.support.service_processes import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def broker(settings) -> redis.Redis:
    """A client of this run's Redis database, as the worker uses it (decoded strings)."""
    client = redis_client(settings.broker_url)
    yield client
    client.close()


@pytest.fixture
def start_worker(committed_database, stripe, tmp_path):
    """``start_worker(settings, **env)`` starts a real Celery worker with embedded beat
    (``tests.processes.WorkerProcess``); all are stopped at teardown."""
    from tests.support.service_processes import WorkerProcess, stopped_at_the_end

    with stopped_at_the_end() as workers:

        def start(settings: Settings, *, concurrency: int = 2, **extra_env: str) -> WorkerProcess:
            directory = tmp_path / f"worker-{len(workers)}"
            directory.mkdir()
            worker = WorkerProcess(
                settings, stripe.url, directory, extra_env, name=f"worker{len(workers)}", concurrency=concurrency
            )
            workers.append(worker)
            return worker.start()

        yield start


@pytest.fixture
def private_settings(private_postgres, settings) -> Settings:
    """``settings`` on a migrated database of the private PostgreSQL (``private_postgres``,
    which the test may restart)."""
    embedded.ensure_database(private_postgres.admin_url, "a700_pipeline")
    url = private_postgres.url("a700_pipeline")
    migrations.upgrade(url)
    yield settings.replace(database_url=url)
    db.engine_for(url).dispose()


class RetryLog(logging.Handler):
    """The client library's retries, by reason ("HTTP 503", "ConnectError", ...)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.reasons.append(getattr(record, "retry_reason", "?"))


@pytest.fixture
def retry_log():
    """The client library's retries during the test (``RetryLog``)."""
    logger = logging.getLogger("agent700_billing")
    handler, level = RetryLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
