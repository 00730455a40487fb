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


# Revision 0004's upgrade flags the rows the service flagged until then by their error
# text. Frozen here as the service wrote it, not imported: old rows' text cannot change.
FLAGGED_UNTIL_0003 = (
    "Not reported within Stripe's 24-hour identifier window; run `stripe reconcile` for its "
    "organization before retrying, so it cannot be counted twice."
)


def test_rows_flagged_for_reconciliation_before_0004_keep_their_meaning(empty_database):
    migrations.upgrade(empty_database, "0003")
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    rows = {
        "flagged": ("failed", FLAGGED_UNTIL_0003),
        "failed otherwise": ("failed", "Organization has no Stripe customer id."),
        "reported": ("reported", None),
        "recorded with the text by chance": ("recorded", FLAGGED_UNTIL_0003),
    }
    ids = {name: uuid.uuid4() for name in rows}
    with engine.begin() as conn:
        organization, user, service, price = (uuid.uuid4() for _ in range(4))
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES (:id, 'Acme')"), {"id": organization})
        conn.execute(sa.text("INSERT INTO users (id, email) VALUES (:id, 'a@example.com')"), {"id": user})
        conn.execute(sa.text("INSERT INTO services (id, name) VALUES (:id, 'transcription')"), {"id": service})
        conn.execute(
            sa.text(
                "INSERT INTO text_model_costs (id, model_name, input_cost_per_token, output_cost_per_token, "
                "agent700_input_cost_per_token, agent700_output_cost_per_token, effective_from) "
                "VALUES (:id, 'gpt-4o', 0, 0, 0, 0, now())"
            ),
            {"id": price},
        )
        for name, (status, error) in rows.items():
            conn.execute(
                sa.text(
                    "INSERT INTO user_billable_request_logs (id, user_id, organization_id, service_id, "
                    "text_model_cost_id, model_name, input_tokens, output_tokens, service_cost, agent700_cost, source, "
                    "occurred_at, received_at, caller_user_id, status, stripe_identifier, stripe_value, error) "
                    "VALUES (:id, :user, :org, :service, :price, 'gpt-4o', 1, 1, 0, 0, 'test', now(), now(), :user, "
                    ":status, :id, 0, :error)"
                ),
                {"id": ids[name], "user": user, "org": organization, "service": service, "price": price,
                 "status": status, "error": error},
            )

    migrations.upgrade(empty_database, "0004")

    with engine.connect() as conn:
        flags = dict(conn.execute(sa.text("SELECT id, needs_reconciliation FROM user_billable_request_logs")).all())
    engine.dispose()
    assert {name: flags[row_id] for name, row_id in ids.items()} == {
        "flagged": True, "failed otherwise": False, "reported": False, "recorded with the text by chance": False,
    }
