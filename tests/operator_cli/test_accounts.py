"""The routine fixes and look-ups of organizations, users, memberships, App Passwords and
services: ``orgs set-stripe-customer`` / ``clear-stripe-customer``, ``activate`` /
``deactivate``, and the ``list`` / ``show`` commands (tables, and ``--json``)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import types
import uuid

import pytest
import redis
import sqlalchemy as sa
import stripe as stripe_sdk

from shared import db, models
from tests.support.billing import UsageRecords
from tests.support.operator_commands import assert_refused, created_id, last_line
from worker import reporting
from worker.stripe_reporting import StripeMeter


def stored(settings, model, row_id):
    with db.transaction(settings.database_url) as session:
        row = session.get(model, row_id)
        session.expunge_all()
        return row


def utc_text(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def invoke_json(runner, *args: str):
    result = runner.invoke(args=[*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- orgs set-stripe-customer / clear-stripe-customer -----------------------------------


def test_set_stripe_customer_sets_it_and_prints_the_organization_id(runner, factory, settings):
    organization = factory.organization(stripe_customer_id=None)

    result = runner.invoke(
        args=["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_Fixed1"]
    )

    assert created_id(result) == organization.id
    assert stored(settings, models.Organization, organization.id).stripe_customer_id == "cus_Fixed1"
    assert "Stripe customer id cus_Fixed1 (was none)" in result.stderr
    assert "failed row" not in result.stderr  # none are waiting


def test_set_stripe_customer_points_at_the_failed_rows_waiting_for_it(runner, factory, settings):
    organization = factory.organization(stripe_customer_id=None)
    usage_records = UsageRecords(factory, settings)
    usage_records.log(organization)
    usage_records.log(organization)
    usage_records.log(factory.organization())  # another organization's

    result = runner.invoke(
        args=["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_Fixed2"]
    )

    assert created_id(result) == organization.id
    assert "It has 2 failed row(s)" in result.stderr
    assert "usage retry --all-failed" in result.stderr


def test_set_stripe_customer_replaces_another_id_only_with_replace(runner, factory, settings):
    organization = factory.organization(stripe_customer_id="cus_Old")
    args = ["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_New"]

    refused = runner.invoke(args=args)

    assert_refused(refused, "already has Stripe customer id cus_Old", "--replace")
    assert stored(settings, models.Organization, organization.id).stripe_customer_id == "cus_Old"

    replaced = runner.invoke(args=[*args, "--replace"])

    assert created_id(replaced) == organization.id
    assert stored(settings, models.Organization, organization.id).stripe_customer_id == "cus_New"
    assert "stays with cus_Old" in replaced.stderr


def test_set_stripe_customer_refuses_the_id_it_already_has(runner, factory):
    organization = factory.organization(stripe_customer_id="cus_Same")

    result = runner.invoke(
        args=["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_Same",
              "--replace"]
    )

    assert result.exit_code == 1
    assert_refused(result, f"Organization {organization.id} already has Stripe customer id cus_Same.")


UNKNOWN = uuid.UUID(int=7)


@pytest.fixture(autouse=True)
def customers_at_stripe(stripe):
    """The customers these tests name exist in the (local) Stripe account, as an operator's would."""
    stripe.create_customers("cus_Acme", "cus_Fixed1", "cus_Fixed2", "cus_Gone", "cus_New", "cus_Old", "cus_Same", "cus_X")


@pytest.mark.parametrize(
    "args, fragment, exit_code",
    [
        (["--org", str(UNKNOWN), "--stripe-customer-id", "cus_X"], f"No organization with id {UNKNOWN}", 1),
        (["--org", "ORG", "--stripe-customer-id", "price_123"], "not a Stripe customer id", 2),
        (["--org", "ORG", "--stripe-customer-id", "cus_"], "not a Stripe customer id", 2),
        (["--org", "acme", "--stripe-customer-id", "cus_X"], "not a valid UUID", 2),
        (["--org", "ORG"], "Missing option '--stripe-customer-id'", 2),
    ],
)
def test_set_stripe_customer_refuses_bad_input(runner, factory, settings, args, fragment, exit_code):
    organization = factory.organization(stripe_customer_id=None)
    args = [str(organization.id) if arg == "ORG" else arg for arg in args]

    result = runner.invoke(args=["orgs", "set-stripe-customer", *args])

    assert result.exit_code == exit_code
    assert_refused(result, fragment)
    assert stored(settings, models.Organization, organization.id).stripe_customer_id is None


def test_clear_stripe_customer_clears_it_once(runner, factory, settings):
    organization = factory.organization(stripe_customer_id="cus_Gone")

    result = runner.invoke(args=["orgs", "clear-stripe-customer", "--org", str(organization.id)])

    assert created_id(result) == organization.id
    assert stored(settings, models.Organization, organization.id).stripe_customer_id is None
    assert "cus_Gone cleared" in result.stderr

    again = runner.invoke(args=["orgs", "clear-stripe-customer", "--org", str(organization.id)])

    assert_refused(again, "has no Stripe customer id; nothing to clear")
    unknown = runner.invoke(args=["orgs", "clear-stripe-customer", "--org", str(uuid.UUID(int=9))])
    assert_refused(unknown, "No organization with id")


def test_the_no_customer_failure_names_the_commands_that_fix_it(runner, factory, settings, stripe):
    """The reason the reporter writes quotes commands an operator can paste as they are
    (with a real customer id for ``cus_...``), and they do fix the row."""
    organization = factory.organization(stripe_customer_id=None)
    row = UsageRecords(factory, settings).log(organization, status=models.UsageStatus.RECORDED, error=None)
    with redis.Redis.from_url(settings.broker_url, decode_responses=True) as broker:
        reporting.report_round(
            lambda: db.transaction(settings.database_url), broker, StripeMeter(settings), reporting.shard_of(organization.id)
        )
    failed = stored(settings, models.UserBillableRequestLog, row.id)
    assert failed.status == models.UsageStatus.FAILED
    assert f"Organization {organization.id} has no Stripe customer id" in failed.error

    commands = re.findall(r"`flask --app ingest_api ([^`]+)`", failed.error)
    assert [command.split()[:2] for command in commands] == [["orgs", "set-stripe-customer"], ["usage", "retry"]]
    stripe.create_customers("cus_Pasted")  # the customer the operator found in Stripe
    for command in commands:
        last_line(runner.invoke(args=shlex.split(command.replace("cus_...", "cus_Pasted"))))

    assert stored(settings, models.Organization, organization.id).stripe_customer_id == "cus_Pasted"
    assert stored(settings, models.UserBillableRequestLog, row.id).status == models.UsageStatus.RECORDED


# --- activate / deactivate --------------------------------------------------------------


@pytest.fixture
def member(factory):
    user, organization = factory.user(), factory.organization()
    membership = factory.membership(user, organization, "superadmin")
    return types.SimpleNamespace(user=user, organization=organization, membership=membership)


SUBJECTS = {
    "orgs": (models.Organization, lambda m: ["--org", str(m.organization.id)], lambda m: m.organization.id),
    "users": (models.User, lambda m: ["--user", str(m.user.id)], lambda m: m.user.id),
    "members": (
        models.OrganizationMembership,
        lambda m: ["--user", str(m.user.id), "--org", str(m.organization.id)],
        lambda m: m.membership.id,
    ),
}


@pytest.mark.parametrize("group", SUBJECTS)
def test_deactivate_then_activate(runner, settings, member, group):
    model, args, row_id = SUBJECTS[group]

    deactivated = runner.invoke(args=[group, "deactivate", *args(member)])

    assert created_id(deactivated) == row_id(member)
    assert stored(settings, model, row_id(member)).is_active is False
    assert "is now inactive" in deactivated.stderr and f"within {settings.auth_cache_seconds:g} s" in deactivated.stderr
    assert "is still accepted and billed" in deactivated.stderr  # what deactivating means for billing

    activated = runner.invoke(args=[group, "activate", *args(member)])

    assert created_id(activated) == row_id(member)
    assert stored(settings, model, row_id(member)).is_active is True


@pytest.mark.parametrize("group", SUBJECTS)
def test_activate_refuses_what_already_is_so(runner, settings, member, group):
    model, args, row_id = SUBJECTS[group]

    result = runner.invoke(args=[group, "activate", *args(member)])

    assert_refused(result, "is already active")
    assert result.stdout == ""
    runner.invoke(args=[group, "deactivate", *args(member)])
    assert_refused(runner.invoke(args=[group, "deactivate", *args(member)]), "is already inactive")
    assert stored(settings, model, row_id(member)).is_active is False


def test_deactivating_a_membership_keeps_its_roles(runner, settings, member):
    runner.invoke(args=["members", "deactivate", "--user", str(member.user.id), "--org", str(member.organization.id)])

    with db.transaction(settings.database_url) as session:
        membership = session.get(models.OrganizationMembership, member.membership.id)
        assert [role.name for role in membership.roles] == ["superadmin"]


@pytest.mark.parametrize("command", ["activate", "deactivate"])
def test_activation_refuses_unknown_or_malformed_ids(runner, factory, member, command):
    unknown = str(uuid.uuid4())
    stranger = factory.user()

    assert_refused(runner.invoke(args=["orgs", command, "--org", unknown]), f"No organization with id {unknown}")
    assert_refused(runner.invoke(args=["users", command, "--user", unknown]), f"No user with id {unknown}")
    org = str(member.organization.id)
    assert_refused(
        runner.invoke(args=["members", command, "--user", unknown, "--org", org]), f"No user with id {unknown}"
    )
    assert_refused(
        runner.invoke(args=["members", command, "--user", str(member.user.id), "--org", unknown]),
        f"No organization with id {unknown}",
    )
    assert_refused(
        runner.invoke(args=["members", command, "--user", str(stranger.id), "--org", org]),
        f"User {stranger.id} is not a member of organization {org}",
    )
    malformed = runner.invoke(args=["users", command, "--user", "42"])
    assert malformed.exit_code == 2
    assert_refused(malformed, "'42' is not a valid UUID")


# --- orgs list / show -------------------------------------------------------------------


def test_orgs_list_and_show(runner, factory):
    acme = factory.organization(name="Acme", stripe_customer_id="cus_Acme")
    dormant = factory.organization(name="Dormant", stripe_customer_id=None, active=False)
    ada, bob = factory.user(email="ada@example.com"), factory.user(email="bob@example.com", active=False)
    factory.membership(ada, acme, "superadmin", "admin")
    factory.membership(bob, acme, "member", active=False)

    listed = runner.invoke(args=["orgs", "list"])

    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "ACTIVE", "STRIPE_CUSTOMER", "MEMBERS", "CREATED_AT", "NAME"]
    assert [line.split()[:4] + line.split()[-1:] for line in lines[1:]] == [
        [str(acme.id), "yes", "cus_Acme", "2", "Acme"],
        [str(dormant.id), "no", "-", "0", "Dormant"],
    ]

    shown = runner.invoke(args=["orgs", "show", "--org", str(acme.id)])

    assert shown.exit_code == 0, shown.output
    assert f"Organization {acme.id}" in shown.stdout
    assert re.search(r"^\s+stripe customer:\s+cus_Acme$", shown.stdout, re.MULTILINE), shown.stdout
    member_lines = shown.stdout.splitlines()[shown.stdout.splitlines().index("Members (2):") + 2 :]
    assert [line.split()[1:] for line in member_lines] == [
        ["yes", str(ada.id), "yes", "admin,superadmin", "ada@example.com"],
        ["no", str(bob.id), "no", "member", "bob@example.com"],
    ]

    no_customer = runner.invoke(args=["orgs", "show", "--org", str(dormant.id)])
    assert "none: its usage cannot be reported to Stripe" in no_customer.stdout
    assert no_customer.stdout.splitlines()[-1] == "No members."


def test_orgs_list_and_show_json(runner, factory, settings):
    acme = factory.organization(name="Acme", stripe_customer_id="cus_Acme")
    ada = factory.user(email="ada@example.com")
    membership = factory.membership(ada, acme, "superadmin")

    listed = invoke_json(runner, "orgs", "list")
    shown = invoke_json(runner, "orgs", "show", "--org", str(acme.id))

    organization = {
        "id": str(acme.id), "name": "Acme", "active": True, "stripe_customer_id": "cus_Acme",
        "created_at": utc_text(stored(settings, models.Organization, acme.id).created_at),
    }
    assert listed == {"organizations": [organization | {"member_count": 1}]}
    assert shown == organization | {
        "members": [
            {"membership_id": str(membership.id), "active": True, "roles": ["superadmin"],
             "user_id": str(ada.id), "email": "ada@example.com", "user_active": True}
        ]
    }


def test_orgs_list_and_show_with_nothing_or_an_unknown_id(runner, settings):
    assert runner.invoke(args=["orgs", "list"]).stdout == "No organizations.\n"
    assert invoke_json(runner, "orgs", "list") == {"organizations": []}
    unknown = uuid.uuid4()
    assert_refused(runner.invoke(args=["orgs", "show", "--org", str(unknown)]), f"No organization with id {unknown}")
    assert_refused(runner.invoke(args=["orgs", "show", "--org", str(unknown), "--json"]), "No organization with id")
    assert_refused(runner.invoke(args=["orgs", "show"]), "Missing option '--org'")


# --- users list / show ------------------------------------------------------------------


def test_users_list_and_show_with_memberships_and_roles(runner, factory):
    acme, beta = factory.organization(name="Acme"), factory.organization(name="Beta", active=False)
    ada, bob = factory.user(email="ada@example.com"), factory.user(email="bob@example.com")
    factory.membership(ada, acme, "superadmin", "admin")
    factory.membership(ada, beta, "member", active=False)

    listed = runner.invoke(args=["users", "list"])

    assert listed.exit_code == 0, listed.output
    ada_line, bob_line = listed.stdout.splitlines()[1:]
    assert ada_line.startswith(str(ada.id)) and bob_line.startswith(str(bob.id))
    assert ada_line.endswith(
        "ada@example.com  Acme (admin,superadmin); Beta (member) [inactive membership and organization]"
    )
    assert bob_line.endswith("bob@example.com  -")

    shown = runner.invoke(args=["users", "show", "--user", str(ada.id)])

    assert shown.exit_code == 0, shown.output
    assert re.search(r"^\s+email:\s+ada@example.com$", shown.stdout, re.MULTILINE), shown.stdout
    rows = shown.stdout.splitlines()[shown.stdout.splitlines().index("Memberships (2):") + 2 :]
    assert [line.split()[1:] for line in rows] == [
        ["yes", str(acme.id), "yes", "admin,superadmin", "Acme"],
        ["no", str(beta.id), "no", "member", "Beta"],
    ]
    assert runner.invoke(args=["users", "show", "--user", str(bob.id)]).stdout.splitlines()[-1] == "No memberships."


def test_users_list_and_show_json(runner, factory, settings):
    acme = factory.organization(name="Acme")
    ada = factory.user(email="ada@example.com", active=False)
    membership = factory.membership(ada, acme, "member")

    listed = invoke_json(runner, "users", "list")
    shown = invoke_json(runner, "users", "show", "--user", str(ada.id))

    assert shown == {
        "id": str(ada.id), "email": "ada@example.com", "active": False,
        "created_at": utc_text(stored(settings, models.User, ada.id).created_at),
        "memberships": [
            {"membership_id": str(membership.id), "active": True, "roles": ["member"],
             "organization_id": str(acme.id), "organization_name": "Acme", "organization_active": True}
        ],
    }
    assert listed == {"users": [shown]}


def test_users_list_and_show_with_nothing_or_an_unknown_id(runner, settings):
    assert runner.invoke(args=["users", "list"]).stdout == "No users.\n"
    assert invoke_json(runner, "users", "list") == {"users": []}
    unknown = uuid.uuid4()
    assert_refused(runner.invoke(args=["users", "show", "--user", str(unknown)]), f"No user with id {unknown}")
    assert_refused(runner.invoke(args=["users", "show", "--user", "ada"]), "not a valid UUID")


# --- app-passwords list -----------------------------------------------------------------


def test_app_passwords_list_shows_names_and_times_never_the_secret(runner, factory, settings):
    user = factory.user()
    tokens = [factory.app_password(user, name=name) for name in ("ci", "laptop")]
    factory.app_password(factory.user(), name="someone-else")
    runner.invoke(args=["app-passwords", "revoke", "--user", str(user.id), "--name", "laptop"])
    used_at = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.UTC)
    with db.transaction(settings.database_url) as session:
        session.execute(
            sa.update(models.AppPassword).where(models.AppPassword.name == "ci").values(last_used_at=used_at)
        )
        secrets = session.execute(sa.select(models.AppPassword.password_hash, models.AppPassword.lookup_prefix)).all()

    table = runner.invoke(args=["app-passwords", "list", "--user", str(user.id)])
    document = invoke_json(runner, "app-passwords", "list", "--user", str(user.id))

    assert table.exit_code == 0, table.output
    ci, laptop = table.stdout.splitlines()[1:]
    assert ci.split()[1:] == ["2025-05-01T12:00:00Z", "-", "ci"]
    assert laptop.split()[1] == "never" and laptop.split()[-1] == "laptop"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", laptop.split()[2])
    assert [p["name"] for p in document["app_passwords"]] == ["ci", "laptop"]
    assert document["app_passwords"][0]["last_used_at"] == "2025-05-01T12:00:00Z"
    assert document["app_passwords"][0]["revoked_at"] is None
    assert document["app_passwords"][1]["last_used_at"] is None
    assert document["app_passwords"][1]["revoked_at"] is not None
    assert set(document["app_passwords"][0]) == {"name", "created_at", "last_used_at", "revoked_at"}
    for secret in [*tokens, *(value for row in secrets for value in row)]:
        assert secret not in table.output and secret not in json.dumps(document)


def test_app_passwords_list_of_a_user_without_any_or_unknown(runner, factory):
    user = factory.user()

    assert runner.invoke(args=["app-passwords", "list", "--user", str(user.id)]).stdout == (
        f"User {user.id} has no App Passwords.\n"
    )
    assert invoke_json(runner, "app-passwords", "list", "--user", str(user.id)) == {
        "user_id": str(user.id), "app_passwords": []
    }
    unknown = uuid.uuid4()
    assert_refused(runner.invoke(args=["app-passwords", "list", "--user", str(unknown)]), f"No user with id {unknown}")
    assert_refused(runner.invoke(args=["app-passwords", "list"]), "Missing option '--user'")


# --- services list ----------------------------------------------------------------------


def test_services_list(runner, factory):
    assert runner.invoke(args=["services", "list"]).stdout == "No services.\n"
    dictation, transcription = factory.service("dictation"), factory.service("transcription")

    table = runner.invoke(args=["services", "list"])
    document = invoke_json(runner, "services", "list")

    assert [line.split()[::2] for line in table.stdout.splitlines()] == [
        ["ID", "NAME"], [str(dictation.id), "dictation"], [str(transcription.id), "transcription"]
    ]
    assert [(s["id"], s["name"]) for s in document["services"]] == [
        (str(dictation.id), "dictation"), (str(transcription.id), "transcription")
    ]


@pytest.mark.parametrize("command", ["set-stripe-customer", "create"])
def test_a_customer_id_stripe_does_not_know_is_refused(runner, factory, stripe, command):
    organization = factory.organization(stripe_customer_id=None)
    args = (
        ["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_Typo"]
        if command == "set-stripe-customer"
        else ["orgs", "create", "--name", "Typo Inc", "--stripe-customer-id", "cus_Typo"]
    )

    result = runner.invoke(args=args)

    assert_refused(result, "Stripe has no customer cus_Typo in this account")
    assert stored(factory.settings, models.Organization, organization.id).stripe_customer_id is None


def test_a_deleted_stripe_customer_is_refused(runner, factory, stripe):
    organization = factory.organization(stripe_customer_id=None)
    stripe.create_customers("cus_Deleted")
    stripe_sdk.StripeClient("sk_test_x", base_addresses={"api": stripe.url}).v1.customers.delete("cus_Deleted")

    result = runner.invoke(
        args=["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_Deleted"]
    )

    assert_refused(result, "Stripe customer cus_Deleted is deleted")


def test_stripe_unreachable_changes_nothing(runner, factory, stripe):
    organization = factory.organization(stripe_customer_id=None)
    stripe.set_faults(fail_next=10, status=500)

    result = runner.invoke(
        args=["orgs", "set-stripe-customer", "--org", str(organization.id), "--stripe-customer-id", "cus_New"]
    )

    assert_refused(result, "Stripe could not be asked whether customer cus_New exists")
    assert stored(factory.settings, models.Organization, organization.id).stripe_customer_id is None
