"""Apply or revert the Alembic migrations programmatically (CLI and tests)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    # Built here, not read from alembic.ini: the installed service has no checkout. The
    # scripts are the installed ``migrations`` package; its env.py takes the URL from here.
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
