"""Database access the commands share: one transaction per command, and failures the
operator can read instead of a traceback."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping

import click
import sqlalchemy as sa
from flask import current_app
from sqlalchemy import orm

from shared import db, models
from shared.config import Settings


def current_settings() -> Settings:
    return current_app.config["SETTINGS"]


@contextlib.contextmanager
def operator_transaction(unique_violations: Mapping[str, str] | None = None) -> Iterator[orm.Session]:
    """A session in one transaction, committed when the block ends without error.

    Duplicates are left to the database's unique constraints rather than checked first,
    so two operators racing get the same clear answer: ``unique_violations`` maps a
    constraint (or unique index) name to the message its violation becomes.
    """
    try:
        with db.transaction(current_settings().database_url) as session:
            yield session
    except sa.exc.IntegrityError as error:
        constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
        message = (unique_violations or {}).get(constraint)
        if message is None:
            raise
        raise click.ClickException(message) from None
    except sa.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise click.ClickException(f"The database could not be used: {reason}") from None


def user_by_id(session: orm.Session, user_id: uuid.UUID, *, lock: bool = False) -> models.User:
    user = session.get(models.User, user_id, with_for_update=lock)
    if user is None:
        raise click.ClickException(f"No user with id {user_id}.")
    return user


def organization_by_id(session: orm.Session, organization_id: uuid.UUID) -> models.Organization:
    organization = session.get(models.Organization, organization_id)
    if organization is None:
        raise click.ClickException(f"No organization with id {organization_id}.")
    return organization
