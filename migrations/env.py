"""Alembic environment: the URL comes from the caller or from shared.config."""

from alembic import context

from shared.models import Base

config = context.config


def database_url() -> str:
    url = config.attributes.get("database_url")
    if url is None:
        from shared.config import get_settings

        url = get_settings().database_url
    return url


def run_migrations_online() -> None:
    import sqlalchemy as sa

    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=Base.metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
