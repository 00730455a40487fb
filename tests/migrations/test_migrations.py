"""The Alembic migrations apply to an empty PostgreSQL, downgrade cleanly, and match the models."""

import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared import db, migrations, models


@pytest.fixture
def empty_database(postgres_server_url):
    name = f"a700_migr_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_the_known_roles(empty_database):
    migrations.upgrade(empty_database)

    assert set(models.Base.metadata.tables) <= _tables(empty_database)
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert set(conn.scalars(sa.text("SELECT name FROM roles"))) >= {"superadmin", "admin", "member"}
    engine.dispose()


def test_downgrade_leaves_only_the_alembic_bookkeeping_and_upgrades_again(empty_database):
    migrations.upgrade(empty_database)
    migrations.downgrade(empty_database, "base")

    assert _tables(empty_database) == {"alembic_version"}
    migrations.upgrade(empty_database)
    assert "user_billable_request_logs" in _tables(empty_database)


def test_models_and_migrations_agree(empty_database):
    migrations.upgrade(empty_database)
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    engine.dispose()
    assert differences == []


def test_a_second_row_for_the_same_event_is_impossible(factory, settings):
    organization = factory.organization()
    user = factory.superadmin(organization)
    service = factory.service()
    price = factory.price()
    row = dict(
        id=uuid.uuid4(), user_id=user.id, organization_id=organization.id, service_id=service.id,
        text_model_cost_id=price.id, model_name="gpt-4o-mini", input_tokens=1, output_tokens=1,
        service_cost=0, agent700_cost=0, source="external_api", occurred_at=sa.func.now(),
        received_at=sa.func.now(), caller_user_id=user.id, status="recorded", stripe_value=0,
    )
    engine = db.engine_for(settings.database_url)
    table = models.UserBillableRequestLog.__table__
    with engine.begin() as conn:
        conn.execute(table.insert().values(**row, stripe_identifier=str(row["id"])))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(table.insert().values(**row, stripe_identifier=str(uuid.uuid4())))
