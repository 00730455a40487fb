"""Database access the commands share: one transaction per command, and failures the
operator can read instead of a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import click
import redis
import sqlalchemy as sa
from flask import current_app
from sqlalchemy import orm

from operator_cli import output
from shared import db, models, queue, redis_connection
from shared.config import Settings


class Activatable(Protocol):
    id: uuid.UUID
    is_active: bool


# How long an operator command waits for Redis before it says so.
BROKER_TIMEOUT_SECONDS = 5


def broker() -> redis.Redis:
    """A Redis client for one command. Text it cannot decode as UTF-8 (only a hand-made
    entry could hold such) is shown escaped rather than failing the command."""
    return redis_connection.for_settings(
        current_settings(),
        socket_timeout=BROKER_TIMEOUT_SECONDS,
        socket_connect_timeout=BROKER_TIMEOUT_SECONDS,
        decode_responses=True,
        encoding_errors="backslashreplace",
    )


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


def organization_by_id(session: orm.Session, organization_id: uuid.UUID, *, lock: bool = False) -> models.Organization:
    organization = session.get(models.Organization, organization_id, with_for_update=lock)
    if organization is None:
        raise click.ClickException(f"No organization with id {organization_id}.")
    return organization


def membership_of(
    session: orm.Session, user_id: uuid.UUID, organization_id: uuid.UUID, *, lock: bool = False
) -> models.OrganizationMembership:
    """The user's membership of the organization; an unknown user or organization is named as such."""
    query = sa.select(models.OrganizationMembership).where(
        models.OrganizationMembership.user_id == user_id,
        models.OrganizationMembership.organization_id == organization_id,
    )
    membership = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if membership is None:
        user_by_id(session, user_id)
        organization_by_id(session, organization_id)
        raise click.ClickException(f"User {user_id} is not a member of organization {organization_id}.")
    return membership


# What deactivating means for billing, said by every command that deactivates: the flag
# decides who may call the API, never whether usage that happened is billed.
STILL_BILLED = "{usage} is still accepted and billed; only who may call the API changes."


def set_active(find: Callable[[orm.Session], Activatable], active: bool, described: str, billed_as: str) -> None:
    """Set the ``is_active`` flag of the row ``find`` returns (locked), then print its id.

    Refused when the row already is in that state, so a script learns that its command
    changed nothing. The web processes trust a caller they verified for
    ``AUTH_CACHE_SECONDS``: the change reaches every one of them within that time. A
    deactivation also says that the usage ``billed_as`` names is still billed.
    """
    state = "active" if active else "inactive"
    with operator_transaction() as session:
        row = find(session)
        if row.is_active == active:
            raise click.ClickException(f"{described} is already {state}.")
        row.is_active = active
    click.echo(
        f"{described} is now {state}; web processes see it within {current_settings().auth_cache_seconds:g} s.",
        err=True,
    )
    if not active:
        click.echo(STILL_BILLED.format(usage=billed_as), err=True)
    click.echo(row.id)


@dataclasses.dataclass(frozen=True)
class Membership:
    """A membership with both its ends, as the ``show`` and ``list`` commands print it."""

    id: uuid.UUID
    active: bool
    roles: list[str]
    user_id: uuid.UUID
    email: str
    user_active: bool
    organization_id: uuid.UUID
    organization_name: str
    organization_active: bool

    def as_json(self, seen_from: str) -> dict:
        """The membership and its other end: seen from the ``"user"``, the organization."""
        document = {"membership_id": str(self.id), "active": self.active, "roles": self.roles}
        if seen_from == "user":
            return document | {
                "organization_id": str(self.organization_id), "organization_name": self.organization_name,
                "organization_active": self.organization_active,
            }
        return document | {"user_id": str(self.user_id), "email": self.email, "user_active": self.user_active}


def show_with_memberships(
    title: str, fields: list[tuple[str, str]], as_json: dict | None, memberships: list[Membership], seen_from: str
) -> None:
    """What ``users show`` and ``orgs show`` print: the fields, then a table of the
    memberships, each with its other end; or, with ``as_json``, that object with them."""
    if as_json is not None:
        key = "memberships" if seen_from == "user" else "members"
        output.print_json(as_json | {key: [m.as_json(seen_from) for m in memberships]})
        return
    output.print_fields(title, fields)
    if not memberships:
        click.echo("No memberships." if seen_from == "user" else "No members.")
        return
    click.echo(f"{'Memberships' if seen_from == 'user' else 'Members'} ({len(memberships)}):")
    if seen_from == "user":
        columns = ["MEMBERSHIP", "ACTIVE", "ORGANIZATION", "ORG_ACTIVE", "ROLES", "ORG_NAME"]
        ends = [(m.organization_id, m.organization_active, m.organization_name) for m in memberships]
    else:
        columns = ["MEMBERSHIP", "ACTIVE", "USER", "USER_ACTIVE", "ROLES", "EMAIL"]
        ends = [(m.user_id, m.user_active, m.email) for m in memberships]
    output.print_table(
        columns,
        [
            [str(m.id), output.yes_no(m.active), str(end_id), output.yes_no(end_active), ",".join(m.roles) or "-", end_name]
            for m, (end_id, end_active, end_name) in zip(memberships, ends, strict=True)
        ],
    )


def memberships(session: orm.Session, *criteria: sa.ColumnElement[bool]) -> list[Membership]:
    """The memberships matching ``criteria`` (on the membership, user or organization),
    each with its role names sorted, ordered by organization name then email."""
    found = session.execute(
        sa.select(models.OrganizationMembership, models.User, models.Organization)
        .join(models.User, models.User.id == models.OrganizationMembership.user_id)
        .join(models.Organization, models.Organization.id == models.OrganizationMembership.organization_id)
        .where(*criteria)
        .options(orm.selectinload(models.OrganizationMembership.roles))
        .order_by(models.Organization.name, models.User.email)
    ).all()
    return [
        Membership(
            id=membership.id, active=membership.is_active, roles=sorted(role.name for role in membership.roles),
            user_id=user.id, email=user.email, user_active=user.is_active,
            organization_id=organization.id, organization_name=organization.name,
            organization_active=organization.is_active,
        )
        for membership, user, organization in found
    ]


def wake_reporters(shards: Iterable[int]) -> None:
    """Wake the shards' reporters. If the broker fails here the rows are already recorded:
    the beat sweep wakes them within seconds, so this only warns."""
    client = broker()
    try:
        queue.wake_reporters(client, shards)
    except redis.RedisError as error:
        click.echo(f"Warning: could not wake the reporters ({error}); the sweep reports the rows within seconds.", err=True)
    finally:
        client.close()
