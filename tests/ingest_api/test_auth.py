"""Auth of POST /api/billing/external-usage, as the contract states it.

The token is an HS256 JWT (``sub`` a user UUID, ``exp`` required) or an App Password
(``app_a7_`` + at least 32 URL-safe characters). The caller must be an active user with
role ``superadmin`` in an active membership of an active organization.

401 (with ``WWW-Authenticate: Bearer``): no token, malformed, bad signature, expired,
unknown or revoked App Password, inactive user. 403: authenticated but not such a
superadmin. Neither queues anything. Every request below carries a valid body, so the
credential is the only thing that can be wrong.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import uuid
import warnings

import jwt
import jwt.warnings
import pytest

from shared import db, models
from tests.support.billing import TEST_JWT_SECRET
from tests.support.error_answers import assert_error, assert_unauthorized
from tests.support.jwt_tokens import b64url
from tests.support.operator_commands import OperatorCliRunner
from tests.support.timestamps import now


def hs256(claims: dict, secret: str = TEST_JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # The test secret is shorter than PyJWT recommends for HS384/HS512; signing with
        # it anyway is the point of those cases.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=algorithm)


def valid_claims(user_id) -> dict:
    return {"sub": str(user_id), "iat": now(), "exp": now() + dt.timedelta(minutes=10)}


def post_with_authorization(billing, authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return billing.client.post("/api/billing/external-usage", json=billing.body(), headers=headers)


# --- no usable credential: 401 ---------------------------------------------------------


def test_no_authorization_header_is_401(billing):
    assert_unauthorized(post_with_authorization(billing, None))
    billing.assert_nothing_queued()


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"operator:password").decode(),
        "Token {app_password}",  # the right secret under the wrong scheme
        "Bearer",
        "Bearer ",
        "{app_password}",  # no scheme at all
    ],
    ids=["basic", "token-scheme", "bearer-without-token", "bearer-blank", "no-scheme"],
)
def test_a_header_not_of_the_bearer_scheme_is_401(billing, authorization):
    assert_unauthorized(post_with_authorization(billing, authorization.format(app_password=billing.app_password)))
    billing.assert_nothing_queued()


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", secrets.token_urlsafe(48)],
    ids=["word", "three-dots", "two-segments", "random"],
)
def test_a_garbage_token_is_401(billing, token):
    assert_unauthorized(billing.post(token=token))
    billing.assert_nothing_queued()


# --- JWTs ------------------------------------------------------------------------------


def test_an_alg_none_jwt_is_401(billing):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": str(billing.caller.id), "exp": int(now().timestamp()) + 600}).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_unauthorized(billing.post(token=token))
    billing.assert_nothing_queued()


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_a_jwt_of_another_algorithm_signed_with_the_right_secret_is_401(billing, algorithm):
    assert_unauthorized(billing.post(token=hs256(valid_claims(billing.caller.id), algorithm=algorithm)))
    billing.assert_nothing_queued()


def test_a_jwt_signed_with_a_wrong_secret_is_401(billing):
    token = hs256(valid_claims(billing.caller.id), secret="another-secret-that-is-at-least-32-bytes!")
    assert_unauthorized(billing.post(token=token))
    billing.assert_nothing_queued()


def test_a_tampered_jwt_is_401(billing):
    other = hs256(valid_claims(uuid.uuid4()))
    mine = hs256(valid_claims(billing.caller.id))
    # My claims under someone else's signature.
    token = ".".join(mine.split(".")[:2] + other.split(".")[2:])
    assert_unauthorized(billing.post(token=token))
    billing.assert_nothing_queued()


def test_an_expired_jwt_is_401(billing):
    claims = valid_claims(billing.caller.id) | {"exp": now() - dt.timedelta(seconds=5)}
    assert_unauthorized(billing.post(token=hs256(claims)))
    billing.assert_nothing_queued()


def test_a_jwt_minted_already_expired_is_401(billing, factory):
    # The CLI's own minting path, with a lifetime already over.
    assert_unauthorized(billing.post(token=factory.jwt(billing.caller, ttl_seconds=-1)))
    billing.assert_nothing_queued()


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_a_jwt_without_a_required_claim_is_401(billing, claim):
    claims = valid_claims(billing.caller.id)
    del claims[claim]
    assert_unauthorized(billing.post(token=hs256(claims)))
    billing.assert_nothing_queued()


@pytest.mark.parametrize("sub", ["not-a-uuid", "", "12345"], ids=["word", "empty", "digits"])
def test_a_jwt_whose_sub_is_not_a_uuid_is_401(billing, sub):
    claims = valid_claims(billing.caller.id) | {"sub": sub}
    assert_unauthorized(billing.post(token=hs256(claims)))
    billing.assert_nothing_queued()


def test_a_jwt_of_an_unknown_user_is_401(billing):
    assert_unauthorized(billing.post(token=hs256(valid_claims(uuid.uuid4()))))
    billing.assert_nothing_queued()


def test_a_valid_jwt_of_a_superadmin_is_accepted(billing):
    response = billing.post(token=billing.jwt)
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.caller_user_id == billing.caller.id
    assert response.get_json() == {"id": str(event.id), "status": "queued"}


# --- App Passwords ---------------------------------------------------------------------


def test_a_valid_app_password_of_a_superadmin_is_accepted(billing):
    response = billing.post(token=billing.app_password)
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.caller_user_id == billing.caller.id


def test_an_unknown_well_formed_app_password_is_401(billing):
    assert_unauthorized(billing.post(token="app_a7_" + secrets.token_urlsafe(32)))
    billing.assert_nothing_queued()


def test_an_app_password_sharing_a_real_ones_lookup_prefix_is_401(billing):
    # Same first characters (the lookup prefix), different secret: the hash decides.
    forged = billing.app_password[:-8] + ("A" * 8 if not billing.app_password.endswith("A" * 8) else "B" * 8)
    assert_unauthorized(billing.post(token=forged))
    billing.assert_nothing_queued()


@pytest.mark.parametrize(
    "token",
    ["app_a7_", "app_a7_short", "app_a7_" + "x" * 31, "app_a7_" + "!" * 40, "app_a7_" + "é" * 40],
    ids=["prefix-only", "short", "31-chars", "not-url-safe", "non-ascii"],
)
def test_a_malformed_app_password_is_401(billing, token):
    response = billing.client.post(
        "/api/billing/external-usage",
        json=billing.body(),
        headers={"Authorization": ("Bearer " + token).encode().decode("latin-1")},
    )
    assert_unauthorized(response)
    billing.assert_nothing_queued()


def test_a_revoked_app_password_is_401_from_the_very_next_request(billing, app):
    assert billing.post().status_code == 202

    result = OperatorCliRunner(app).invoke(
        args=["app-passwords", "revoke", "--user", str(billing.caller.id), "--name", "ingest"]
    )
    assert result.exit_code == 0, result.output

    assert_unauthorized(billing.post())
    assert len(billing.queued()) == 1  # only the request before the revocation


def test_revoking_one_app_password_leaves_the_others_working(billing, factory, app):
    other = factory.app_password(billing.caller, name="other")
    result = OperatorCliRunner(app).invoke(
        args=["app-passwords", "revoke", "--user", str(billing.caller.id), "--name", "ingest"]
    )
    assert result.exit_code == 0, result.output
    assert_unauthorized(billing.post())
    assert billing.post(token=other).status_code == 202


# --- who the caller is: inactive user 401, not a superadmin 403 --------------------------


def _inactive_superadmin(factory, organization):
    user = factory.user(active=False)
    factory.membership(user, organization, models.SUPERADMIN)
    return user


@pytest.mark.parametrize("credential", ["jwt", "app_password"])
def test_an_inactive_user_is_401(billing, factory, credential):
    user = _inactive_superadmin(factory, billing.organization)
    token = factory.jwt(user) if credential == "jwt" else factory.app_password(user)
    assert_unauthorized(billing.post(token=token))
    billing.assert_nothing_queued()


def test_a_user_deactivated_after_the_token_was_issued_is_401(billing, settings):
    with db.transaction(settings.database_url) as session:
        session.get(models.User, billing.caller.id).is_active = False
    assert_unauthorized(billing.post(token=billing.jwt))
    assert_unauthorized(billing.post(token=billing.app_password))
    billing.assert_nothing_queued()


def _forbidden_callers(factory, organization):
    """Active users, each failing the superadmin rule in one way."""
    member = factory.user()
    factory.membership(member, organization, "member")

    admin = factory.user()
    factory.membership(admin, organization, "admin", "member")

    no_membership = factory.user()

    inactive_membership = factory.user()
    factory.membership(inactive_membership, organization, models.SUPERADMIN, active=False)

    inactive_organization = factory.user()
    factory.membership(inactive_organization, factory.organization(active=False), models.SUPERADMIN)

    # Superadmin only where the organization is inactive, a plain member where it is
    # active: the role and the two activities must hold on the same membership.
    split = factory.user()
    factory.membership(split, factory.organization(active=False), models.SUPERADMIN)
    factory.membership(split, organization, "member")

    return {
        "member-only": member,
        "admin-not-superadmin": admin,
        "no-membership": no_membership,
        "superadmin-only-in-inactive-membership": inactive_membership,
        "superadmin-only-in-inactive-organization": inactive_organization,
        "superadmin-only-where-org-inactive-member-where-active": split,
    }


@pytest.mark.parametrize(
    "who",
    [
        "member-only",
        "admin-not-superadmin",
        "no-membership",
        "superadmin-only-in-inactive-membership",
        "superadmin-only-in-inactive-organization",
        "superadmin-only-where-org-inactive-member-where-active",
    ],
)
@pytest.mark.parametrize("credential", ["jwt", "app_password"])
def test_an_authenticated_caller_who_is_not_an_active_superadmin_is_403(billing, factory, who, credential):
    user = _forbidden_callers(factory, billing.organization)[who]
    token = factory.jwt(user) if credential == "jwt" else factory.app_password(user)
    response = billing.post(token=token)
    assert_error(response, 403)
    billing.assert_nothing_queued()


def test_superadmin_in_one_active_membership_suffices(billing, factory):
    user = factory.user()
    factory.membership(user, factory.organization(active=False), models.SUPERADMIN)
    factory.membership(user, factory.organization(), "member", active=False)
    factory.membership(user, factory.organization(), models.SUPERADMIN)
    response = billing.post(token=factory.jwt(user))
    assert response.status_code == 202, response.get_json()
    (event,) = billing.queued()
    assert event.caller_user_id == user.id


def test_auth_is_checked_before_the_body(billing):
    # An invalid body from an anonymous caller reveals nothing about validation.
    response = billing.client.post("/api/billing/external-usage", data=b"not json", content_type="text/plain")
    assert_unauthorized(response)
    billing.assert_nothing_queued()
