"""Shared fixtures: a real PostgreSQL database and Redis database of this run's own, the
local Stripe-compatible server, the Flask app, and small factories for billing data.

Servers: the configured ones (``TEST_DATABASE_URL``/``DATABASE_URL``,
``TEST_BROKER_URL``/``CELERY_BROKER_URL``) when reachable, else this machine's defaults
on 127.0.0.1, else embedded ones under ``var/test``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import tempfile
import uuid
from decimal import Decimal

# Multiprocess metrics of this run (pytest and the workers it starts) in a directory of
# its own, settled before shared.metrics is first imported.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="a700-test-metrics-"))

import pytest
import redis
import sqlalchemy as sa
from flask.cli import FlaskGroup
from flask.testing import FlaskCliRunner

from shared import db, embedded, migrations, models
from shared.config import Settings

TEST_JWT_SECRET = "test-secret-that-is-at-least-32-bytes-long!"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


TEST_SERVERS_DIR = embedded.VAR_DIR / "test"


def _postgres_server_url() -> str | None:
    """The configured or this machine's PostgreSQL; None if there is none to use."""
    for name in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            url = sa.make_url(os.environ[name]).set(drivername="postgresql+psycopg2")
            return url.set(database="postgres").render_as_string(hide_password=False)
    if _reachable("127.0.0.1", 5432):
        return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    return None


@pytest.fixture(scope="session")
def postgres_server_url():
    """A PostgreSQL server for this run: the configured one or this machine's, else an
    embedded one under var/test that is stopped when the run ends."""
    url = _postgres_server_url()
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
    name = f"a700_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    migrations.upgrade(url)
    yield url
    db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _redis_server_url() -> str | None:
    """The configured or this machine's Redis; None if there is none to use."""
    for name in ("TEST_BROKER_URL", "CELERY_BROKER_URL"):
        if os.environ.get(name):
            return os.environ[name]
    if _reachable("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    return None


@pytest.fixture(scope="session")
def redis_server_url():
    """A Redis server for this run: the configured one or this machine's, else one under
    var/test that is stopped when the run ends."""
    url = _redis_server_url()
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


METER_EVENT_NAME = "agent700_cost"


@pytest.fixture(scope="session", autouse=True)
def process_settings(database_url: str, broker_url: str):
    """This process's own settings (``get_settings()``: what the shared Celery app sends
    wake-ups with) point at this run's servers, as a deployed process's environment does."""
    from shared.config import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", database_url)
        patch.setenv("CELERY_BROKER_URL", broker_url)
        patch.setenv("JWT_SECRET", TEST_JWT_SECRET)
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


@pytest.fixture
def clean_state(database_url: str, broker_url: str):
    """Every test starts from empty tables and an empty Redis database."""
    _truncate_all(database_url)
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
        stripe_meter_event_name="agent700_cost",
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


class OperatorCliRunner(FlaskCliRunner):
    """Runs ``flask --app ingest_api <command>`` in-process: the operator commands come
    from the ``flask.commands`` entry points, as the ``flask`` command loads them."""

    def invoke(self, cli=None, args=None, **kwargs):
        return super().invoke(cli or FlaskGroup(create_app=lambda: self.app), args, **kwargs)


@pytest.fixture
def runner(app):
    return OperatorCliRunner(app)


@pytest.fixture
def session(settings: Settings):
    """A session for arranging and asserting; each ``with session.begin()`` commits."""
    with db.session_factory(settings.database_url)() as session:
        yield session


class Factory:
    """Creates billing data directly in the database, committed, for tests to act on; an
    organization's Stripe customer is created at the local Stripe server too."""

    def __init__(self, settings: Settings, stripe=None):
        self.settings = settings
        self.stripe = stripe

    def _add(self, row):
        with db.transaction(self.settings.database_url) as session:
            session.add(row)
        return row

    def organization(self, *, name: str | None = None, stripe_customer_id: str | None = "cus_test", active: bool = True):
        if stripe_customer_id and self.stripe is not None:
            self.stripe.create_customers(stripe_customer_id)
        return self._add(
            models.Organization(
                name=name or f"org-{uuid.uuid4().hex[:8]}", stripe_customer_id=stripe_customer_id, is_active=active
            )
        )

    def user(self, *, email: str | None = None, active: bool = True):
        return self._add(models.User(email=email or f"{uuid.uuid4().hex[:8]}@example.test", is_active=active))

    def membership(self, user, organization, *roles: str, active: bool = True):
        with db.transaction(self.settings.database_url) as session:
            role_rows = session.scalars(sa.select(models.Role).where(models.Role.name.in_(roles))).all()
            membership = models.OrganizationMembership(
                user_id=user.id, organization_id=organization.id, is_active=active, roles=list(role_rows)
            )
            session.add(membership)
        return membership

    def superadmin(self, organization=None):
        """An active user who is superadmin in an active membership of an active organization."""
        user = self.user()
        self.membership(user, organization or self.organization(), models.SUPERADMIN)
        return user

    def app_password(self, user, *, name: str | None = None) -> str:
        from ingest_api.credentials import new_app_password

        secret = new_app_password()
        self._add(
            models.AppPassword(
                user_id=user.id,
                name=name or f"pw-{uuid.uuid4().hex[:6]}",
                lookup_prefix=secret.lookup_prefix,
                password_hash=secret.password_hash,
            )
        )
        return secret.token

    def jwt(self, user, ttl_seconds: int = 3600) -> str:
        from ingest_api.credentials import mint_jwt

        return mint_jwt(user.id, self.settings.jwt_secret, ttl_seconds)

    def service(self, name: str = "transcription"):
        return self._add(models.Service(name=name))

    def price(
        self,
        model_name: str = "gpt-4o-mini",
        *,
        input_cost: str = "0.00000015",
        output_cost: str = "0.0000006",
        agent700_input_cost: str = "0.0000003",
        agent700_output_cost: str = "0.0000012",
        effective_from: dt.datetime | None = None,
    ):
        return self._add(
            models.TextModelCost(
                model_name=model_name,
                input_cost_per_token=Decimal(input_cost),
                output_cost_per_token=Decimal(output_cost),
                agent700_input_cost_per_token=Decimal(agent700_input_cost),
                agent700_output_cost_per_token=Decimal(agent700_output_cost),
                effective_from=effective_from or dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
            )
        )


@pytest.fixture
def factory(settings: Settings, stripe) -> Factory:
    return Factory(settings, stripe)


@pytest.fixture
def start_worker(stripe, tmp_path):
    """``start_worker(settings, **env)`` starts a real Celery worker with embedded beat
    (``tests.processes.WorkerProcess``); all are stopped at teardown."""
    from tests.processes import WorkerProcess

    workers: list[WorkerProcess] = []

    def start(settings: Settings, **extra_env: str) -> WorkerProcess:
        directory = tmp_path / f"worker-{len(workers)}"
        directory.mkdir()
        worker = WorkerProcess(settings, stripe.url, directory, extra_env, name=f"worker{len(workers)}")
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()
