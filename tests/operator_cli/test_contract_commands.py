"""The operator commands of the contract (``flask --app ingest_api <command>``).

Each command that creates something prints the new id (or token) alone on its last line
of standard output; errors are one readable line on standard error, a non-zero exit
code, and nothing written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from decimal import Decimal

import jwt
import pytest
import sqlalchemy as sa

from ingest_api import credentials
from shared import models
from tests.support.operator_commands import assert_refused, count, created_id, last_line, price_args

EVERY_ROLE = ["admin", "member", "superadmin"]








# --- orgs create ------------------------------------------------------------------------


def test_orgs_create_prints_the_id_of_the_stored_organization(runner, session, stripe):
    stripe.create_customers("cus_Acme123")
    result = runner.invoke(args=["orgs", "create", "--name", "Acme", "--stripe-customer-id", "cus_Acme123"])

    organization = session.get(models.Organization, created_id(result))
    assert (organization.name, organization.stripe_customer_id, organization.is_active) == ("Acme", "cus_Acme123", True)


def test_orgs_create_inactive_without_stripe_customer(runner, session):
    result = runner.invoke(args=["orgs", "create", "--name", "Dormant", "--inactive"])

    organization = session.get(models.Organization, created_id(result))
    assert organization.is_active is False
    assert organization.stripe_customer_id is None


def test_orgs_create_refuses_a_duplicate_name(runner, factory, session):
    factory.organization(name="Acme")

    result = runner.invoke(args=["orgs", "create", "--name", "Acme"])

    assert result.exit_code == 1
    assert_refused(result, "'Acme' already exists")
    assert count(session, models.Organization) == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--name", "   "], "must not be empty"),
        (["--name", "Acme", "--stripe-customer-id", "price_123"], "not a Stripe customer id"),
        ([], "Missing option '--name'"),
    ],
)
def test_orgs_create_refuses_bad_input(runner, session, args, fragment):
    result = runner.invoke(args=["orgs", "create", *args])

    assert_refused(result, fragment)
    assert count(session, models.Organization) == 0


# --- users create -----------------------------------------------------------------------


def test_users_create_prints_the_id_of_the_stored_user(runner, session):
    result = runner.invoke(args=["users", "create", "--email", "ada@example.com"])

    user = session.get(models.User, created_id(result))
    assert (user.email, user.is_active) == ("ada@example.com", True)


def test_users_create_inactive(runner, session):
    result = runner.invoke(args=["users", "create", "--email", "gone@example.com", "--inactive"])

    assert session.get(models.User, created_id(result)).is_active is False


def test_users_create_refuses_an_email_that_differs_only_in_case(runner, factory, session):
    factory.user(email="ada@example.com")

    result = runner.invoke(args=["users", "create", "--email", "ADA@Example.com"])

    assert result.exit_code == 1
    assert_refused(result, "already exists", "case-insensitive")
    assert count(session, models.User) == 1


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "spa ce@example.com", "@example.com", ""])
def test_users_create_refuses_an_invalid_email(runner, session, email):
    result = runner.invoke(args=["users", "create", "--email", email])

    assert result.exit_code == 2
    assert_refused(result, "--email")
    assert count(session, models.User) == 0


# --- members add ------------------------------------------------------------------------


def membership_of(session, user_id, organization_id) -> models.OrganizationMembership:
    session.expire_all()
    return session.scalars(
        sa.select(models.OrganizationMembership).where(
            models.OrganizationMembership.user_id == user_id,
            models.OrganizationMembership.organization_id == organization_id,
        )
    ).one()


def role_names(membership) -> set[str]:
    return {role.name for role in membership.roles}


def test_members_add_creates_a_membership_with_every_given_role(runner, factory, session):
    user, organization = factory.user(), factory.organization()

    result = runner.invoke(
        args=["members", "add", "--user", str(user.id), "--org", str(organization.id), "--role", "superadmin", "--role", "admin"]
    )

    membership = membership_of(session, user.id, organization.id)
    assert created_id(result) == membership.id
    assert membership.is_active is True
    assert role_names(membership) == {"superadmin", "admin"}


def test_members_add_on_an_existing_membership_adds_roles_and_sets_its_active_flag(runner, factory, session):
    user, organization = factory.user(), factory.organization()
    ids = ["--user", str(user.id), "--org", str(organization.id)]
    first_id = created_id(runner.invoke(args=["members", "add", *ids, "--role", "member"]))

    second = runner.invoke(args=["members", "add", *ids, "--role", "superadmin", "--inactive"])

    membership = membership_of(session, user.id, organization.id)
    assert created_id(second) == first_id == membership.id
    assert membership.is_active is False
    assert role_names(membership) == {"member", "superadmin"}

    third = runner.invoke(args=["members", "add", *ids, "--role", "member"])

    membership = membership_of(session, user.id, organization.id)
    assert created_id(third) == first_id
    assert membership.is_active is True
    assert role_names(membership) == {"member", "superadmin"}
    assert count(session, models.OrganizationMembership) == 1


def test_members_add_refuses_an_unknown_role_and_lists_the_known_ones(runner, factory, session):
    user, organization = factory.user(), factory.organization()

    result = runner.invoke(
        args=["members", "add", "--user", str(user.id), "--org", str(organization.id), "--role", "member", "--role", "owner"]
    )

    assert_refused(result, "'owner'", ", ".join(EVERY_ROLE))
    assert count(session, models.OrganizationMembership) == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(models.membership_roles)) == 0


def test_members_add_refuses_unknown_or_malformed_ids(runner, factory, session):
    user, organization = factory.user(), factory.organization()
    unknown = str(uuid.uuid4())

    unknown_user = runner.invoke(args=["members", "add", "--user", unknown, "--org", str(organization.id), "--role", "member"])
    unknown_org = runner.invoke(args=["members", "add", "--user", str(user.id), "--org", unknown, "--role", "member"])
    malformed = runner.invoke(args=["members", "add", "--user", "42", "--org", str(organization.id), "--role", "member"])

    assert_refused(unknown_user, f"No user with id {unknown}")
    assert_refused(unknown_org, f"No organization with id {unknown}")
    assert malformed.exit_code == 2
    assert_refused(malformed, "'42' is not a valid UUID")
    assert count(session, models.OrganizationMembership) == 0


# --- app-passwords ----------------------------------------------------------------------


def test_app_passwords_create_prints_a_token_stored_only_as_its_hash(runner, factory, session):
    user = factory.user()

    result = runner.invoke(args=["app-passwords", "create", "--user", str(user.id), "--name", "ci"])

    token = last_line(result)
    assert credentials.is_app_password(token) and credentials.lookup_prefix_of(token)
    stored = session.scalars(sa.select(models.AppPassword)).one()
    assert (stored.user_id, stored.name, stored.revoked_at) == (user.id, "ci", None)
    assert stored.password_hash == hashlib.sha256(token.encode()).hexdigest()
    assert stored.lookup_prefix == credentials.lookup_prefix_of(token)
    # The token appears in no row of any table.
    for table in models.Base.metadata.sorted_tables:
        leaks = session.scalar(
            sa.text(f"SELECT count(*) FROM {table.name} AS t WHERE row_to_json(t)::text LIKE :token"),
            {"token": f"%{token[len(credentials.APP_PASSWORD_PREFIX):]}%"},
        )
        assert leaks == 0, table.name


def test_app_passwords_create_refuses_a_duplicate_live_name(runner, factory, session):
    user = factory.user()
    factory.app_password(user, name="ci")

    result = runner.invoke(args=["app-passwords", "create", "--user", str(user.id), "--name", "ci"])

    assert_refused(result, "already has a live App Password named 'ci'")
    assert count(session, models.AppPassword) == 1


def test_app_passwords_create_may_reuse_a_revoked_name(runner, factory, session):
    user = factory.user()
    args = ["--user", str(user.id), "--name", "ci"]
    runner.invoke(args=["app-passwords", "create", *args])
    runner.invoke(args=["app-passwords", "revoke", *args])

    result = runner.invoke(args=["app-passwords", "create", *args])

    token = last_line(result)
    live = session.scalars(sa.select(models.AppPassword).where(models.AppPassword.revoked_at.is_(None))).one()
    assert live.password_hash == credentials.hash_app_password(token)
    assert count(session, models.AppPassword) == 2


def test_app_passwords_create_allows_ten_live_passwords_per_user_and_no_more(runner, factory, session):
    user = factory.user()
    for number in range(models.MAX_APP_PASSWORDS_PER_USER):
        last_line(runner.invoke(args=["app-passwords", "create", "--user", str(user.id), "--name", f"pw-{number}"]))

    result = runner.invoke(args=["app-passwords", "create", "--user", str(user.id), "--name", "one-too-many"])

    assert_refused(result, "10 live App Passwords", "revoke one first")
    assert count(session, models.AppPassword) == models.MAX_APP_PASSWORDS_PER_USER

    runner.invoke(args=["app-passwords", "revoke", "--user", str(user.id), "--name", "pw-0"])
    last_line(runner.invoke(args=["app-passwords", "create", "--user", str(user.id), "--name", "one-too-many"]))


def test_app_passwords_create_refuses_an_unknown_user_or_an_empty_name(runner, factory, session):
    unknown = str(uuid.uuid4())

    unknown_user = runner.invoke(args=["app-passwords", "create", "--user", unknown, "--name", "ci"])
    empty_name = runner.invoke(args=["app-passwords", "create", "--user", str(factory.user().id), "--name", " "])

    assert_refused(unknown_user, f"No user with id {unknown}")
    assert_refused(empty_name, "must not be empty")
    assert count(session, models.AppPassword) == 0


def test_app_passwords_revoke_sets_revoked_at_at_once(runner, factory, session):
    user = factory.user()
    factory.app_password(user, name="ci")
    before = dt.datetime.now(dt.UTC)

    result = runner.invoke(args=["app-passwords", "revoke", "--user", str(user.id), "--name", "ci"])

    assert result.exit_code == 0, result.output
    stored = session.scalars(sa.select(models.AppPassword)).one()
    assert stored.revoked_at is not None
    assert before - dt.timedelta(seconds=5) <= stored.revoked_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


def test_app_passwords_revoke_refuses_an_unknown_or_already_revoked_password(runner, factory, session):
    user = factory.user()
    factory.app_password(user, name="ci")
    args = ["--user", str(user.id)]
    runner.invoke(args=["app-passwords", "revoke", *args, "--name", "ci"])
    revoked_at = session.scalars(sa.select(models.AppPassword.revoked_at)).one()

    again = runner.invoke(args=["app-passwords", "revoke", *args, "--name", "ci"])
    unknown_name = runner.invoke(args=["app-passwords", "revoke", *args, "--name", "nope"])
    unknown_user = runner.invoke(args=["app-passwords", "revoke", "--user", str(uuid.uuid4()), "--name", "ci"])

    assert_refused(again, "already revoked")
    assert_refused(unknown_name, "no App Password named 'nope'")
    assert_refused(unknown_user, "No user with id")
    session.expire_all()
    assert session.scalars(sa.select(models.AppPassword.revoked_at)).one() == revoked_at


# --- tokens mint ------------------------------------------------------------------------


def test_tokens_mint_prints_a_jwt_for_the_user(runner, factory, settings):
    user = factory.user()

    result = runner.invoke(args=["tokens", "mint", "--user", str(user.id), "--ttl-seconds", "120"])

    token = last_line(result)
    assert credentials.JwtVerifier(settings.jwt_secret).verify(token)[0] == user.id
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120


def test_tokens_mint_defaults_to_an_hour(runner, factory, settings):
    user = factory.user()

    token = last_line(runner.invoke(args=["tokens", "mint", "--user", str(user.id)]))

    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_tokens_mint_refuses_a_non_positive_ttl(runner, factory, ttl):
    result = runner.invoke(args=["tokens", "mint", "--user", str(factory.user().id), "--ttl-seconds", ttl])

    assert result.exit_code == 2
    assert_refused(result, "--ttl-seconds")
    assert result.stdout == ""


def test_tokens_mint_refuses_unknown_or_malformed_user_ids(runner, settings):
    unknown = str(uuid.uuid4())

    unknown_user = runner.invoke(args=["tokens", "mint", "--user", unknown])
    malformed = runner.invoke(args=["tokens", "mint", "--user", "not-a-uuid"])

    assert_refused(unknown_user, f"No user with id {unknown}")
    assert_refused(malformed, "not a valid UUID")
    assert unknown_user.stdout == malformed.stdout == ""


# --- services add -----------------------------------------------------------------------


def test_services_add_prints_the_id_of_the_stored_service(runner, session):
    result = runner.invoke(args=["services", "add", "--name", "transcription"])

    assert session.get(models.Service, created_id(result)).name == "transcription"


def test_services_add_refuses_a_duplicate_name(runner, factory, session):
    factory.service("transcription")

    result = runner.invoke(args=["services", "add", "--name", "transcription"])

    assert_refused(result, "'transcription' already exists")
    assert count(session, models.Service) == 1


# --- prices set -------------------------------------------------------------------------





def test_prices_set_stores_the_exact_decimals(runner, session):
    result = runner.invoke(args=[*price_args(), "--effective-from", "2025-03-01T12:00:00+02:00"])

    price = session.get(models.TextModelCost, created_id(result))
    assert price.model_name == "gpt-4o-mini"
    assert price.input_cost_per_token == Decimal("0.00000015")
    assert price.output_cost_per_token == Decimal("0.0000006")
    assert price.agent700_input_cost_per_token == Decimal("0.000000300000000001")
    assert price.agent700_output_cost_per_token == Decimal("0.0000012")
    assert all(
        isinstance(rate, Decimal)
        for rate in (price.input_cost_per_token, price.agent700_input_cost_per_token)
    )
    assert price.effective_from == dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)


def test_prices_set_defaults_effective_from_to_now(runner, session):
    before = dt.datetime.now(dt.UTC)

    result = runner.invoke(args=price_args())

    price = session.get(models.TextModelCost, created_id(result))
    assert before <= price.effective_from <= dt.datetime.now(dt.UTC)


def test_prices_set_accepts_zero_and_trailing_zeros_beyond_18_places(runner, session):
    result = runner.invoke(args=price_args(input_per_token="0", output_per_token="1.50000000000000000000"))

    price = session.get(models.TextModelCost, created_id(result))
    assert price.input_cost_per_token == 0
    assert price.output_cost_per_token == Decimal("1.5")


def test_prices_set_adds_a_later_row_and_refuses_the_same_model_and_time(runner, session):
    first = runner.invoke(args=[*price_args(), "--effective-from", "2025-01-01T00:00:00Z"])
    later = runner.invoke(args=[*price_args(input_per_token="0.0000002"), "--effective-from", "2025-06-01T00:00:00Z"])
    duplicate = runner.invoke(args=[*price_args(input_per_token="9"), "--effective-from", "2025-01-01T01:00:00+01:00"])

    assert created_id(first) != created_id(later)
    assert_refused(duplicate, "'gpt-4o-mini' already has a price effective from 2025-01-01")
    assert count(session, models.TextModelCost) == 2
    assert session.scalar(sa.select(sa.func.max(models.TextModelCost.input_cost_per_token))) == Decimal("0.0000002")


@pytest.mark.parametrize(
    "rate, fragment",
    [
        ("abc", "not a decimal number"),
        ("0.1.2", "not a decimal number"),
        ("NaN", "not a finite decimal"),
        ("sNaN", "not a finite decimal"),
        ("Infinity", "not a finite decimal"),
        ("-Infinity", "not a finite decimal"),
        ("-0.000001", "negative"),
        ("0.0000000000000000001", "more than 18 decimal places"),
        ("1e-19", "more than 18 decimal places"),
        ("1e12", "too large"),
    ],
)
@pytest.mark.parametrize("option", ["input_per_token", "output_per_token", "agent700_input_per_token", "agent700_output_per_token"])
def test_prices_set_refuses_a_bad_decimal(runner, session, option, rate, fragment):
    result = runner.invoke(args=price_args(**{option: rate}))

    assert result.exit_code == 2
    assert_refused(result, f"--{option.replace('_', '-')}", fragment)
    assert count(session, models.TextModelCost) == 0


@pytest.mark.parametrize(
    "time",
    ["2025-01-01T00:00:00", "2025-01-01", "yesterday", "2025-13-01T00:00:00Z", "2025-01-01T00:00Z", "1735689600"],
)
def test_prices_set_refuses_a_bad_time(runner, session, time):
    result = runner.invoke(args=[*price_args(), "--effective-from", time])

    assert result.exit_code == 2
    assert_refused(result, "--effective-from")
    assert count(session, models.TextModelCost) == 0


# --- seed-demo --------------------------------------------------------------------------


def live_app_passwords(session) -> list[models.AppPassword]:
    return session.scalars(sa.select(models.AppPassword).where(models.AppPassword.revoked_at.is_(None))).all()


def test_seed_demo_creates_a_superadmin_who_can_use_the_printed_app_password(runner, session):
    result = runner.invoke(args=["seed-demo"])

    token = last_line(result)
    organization = session.scalars(sa.select(models.Organization)).one()
    assert organization.is_active and organization.stripe_customer_id.startswith("cus_")
    membership = session.scalars(sa.select(models.OrganizationMembership)).one()
    assert membership.organization_id == organization.id and membership.is_active
    assert role_names(membership) == {models.SUPERADMIN}
    superadmin = session.get(models.User, membership.user_id)
    assert superadmin.is_active
    assert session.scalars(sa.select(models.Service.name)).all() == ["transcription"]
    prices = {price.model_name: price for price in session.scalars(sa.select(models.TextModelCost))}
    assert {"gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-20241022"} <= prices.keys()
    assert prices["gpt-4o-mini"].input_cost_per_token == Decimal("0.00000015")
    [demo_password] = live_app_passwords(session)
    assert demo_password.user_id == superadmin.id
    assert credentials.app_password_matches(token, demo_password.password_hash)
    assert demo_password.lookup_prefix == credentials.lookup_prefix_of(token)


def test_seed_demo_twice_reuses_the_rows_and_replaces_the_demo_app_password(runner, session):
    first_token = last_line(runner.invoke(args=["seed-demo"]))
    counts = {model: count(session, model) for model in (models.Organization, models.User, models.OrganizationMembership, models.Service, models.TextModelCost)}

    second_token = last_line(runner.invoke(args=["seed-demo"]))

    session.expire_all()
    assert second_token != first_token
    assert {model: count(session, model) for model in counts} == counts
    [live] = live_app_passwords(session)
    assert credentials.app_password_matches(second_token, live.password_hash)
    previous = session.scalars(
        sa.select(models.AppPassword).where(models.AppPassword.password_hash == credentials.hash_app_password(first_token))
    ).one()
    assert previous.revoked_at is not None


def test_seed_demo_reactivates_demo_rows_an_operator_deactivated(runner, session):
    last_line(runner.invoke(args=["seed-demo"]))
    with session.begin():
        for model in (models.Organization, models.User, models.OrganizationMembership):
            session.execute(sa.update(model).values(is_active=False))

    last_line(runner.invoke(args=["seed-demo"]))

    session.expire_all()
    for model in (models.Organization, models.User, models.OrganizationMembership):
        assert session.scalars(sa.select(model.is_active)).all() == [True], model


def test_seed_demo_keeps_other_rows_with_its_names(runner, factory, session):
    """An existing service or price is reused, not duplicated and not overwritten."""
    factory.service("transcription")
    factory.price("gpt-4o", input_cost="0.000001", effective_from=dt.datetime(2023, 1, 1, tzinfo=dt.UTC))

    last_line(runner.invoke(args=["seed-demo"]))

    assert count(session, models.Service) == 1
    gpt_4o_rates = session.scalars(
        sa.select(models.TextModelCost.input_cost_per_token).where(models.TextModelCost.model_name == "gpt-4o")
    ).all()
    assert sorted(gpt_4o_rates) == [Decimal("0.000001"), Decimal("0.0000025")]


# --- scripting --------------------------------------------------------------------------


def test_created_ids_chain_into_a_working_superadmin(runner, session, settings, stripe):
    """What a setup script does: each command's last line feeds the next one."""
    stripe.create_customers("cus_acme")
    organization_id = last_line(runner.invoke(args=["orgs", "create", "--name", "Acme", "--stripe-customer-id", "cus_acme"]))
    user_id = last_line(runner.invoke(args=["users", "create", "--email", "ops@acme.example"]))
    membership_id = last_line(
        runner.invoke(args=["members", "add", "--user", user_id, "--org", organization_id, "--role", "superadmin"])
    )
    token = last_line(runner.invoke(args=["app-passwords", "create", "--user", user_id, "--name", "ingest"]))
    jwt_token = last_line(runner.invoke(args=["tokens", "mint", "--user", user_id]))

    membership = session.get(models.OrganizationMembership, uuid.UUID(membership_id))
    assert str(membership.user_id) == user_id and str(membership.organization_id) == organization_id
    assert credentials.JwtVerifier(settings.jwt_secret).verify(jwt_token)[0] == uuid.UUID(user_id)
    assert credentials.app_password_matches(token, session.scalars(sa.select(models.AppPassword.password_hash)).one())
