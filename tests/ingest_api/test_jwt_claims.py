"""The claims a JWT is held to beyond its signature: ``JWT_AUDIENCE`` / ``JWT_ISSUER``
when set, the longest accepted lifetime (``JWT_MAX_LIFETIME_SECONDS``, a day by default),
``nbf``; and ``tokens mint`` staying within them. Every refusal is a 401 with
``WWW-Authenticate: Bearer`` and nothing queued."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest

from tests.support.billing import TEST_JWT_SECRET
from tests.support.jwt_tokens import claims_for, hs256_with_raw_key
from tests.support.operator_commands import OperatorCliRunner

DAY = 86400


def hs256(claims: dict) -> str:
    if not isinstance(claims.get("iss", ""), str):  # PyJWT refuses to sign such a token
        return hs256_with_raw_key(claims, TEST_JWT_SECRET.encode())
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


def assert_accepted(response) -> None:
    assert response.status_code == 202, response.get_json()


# --- audience -------------------------------------------------------------------------


@pytest.mark.parametrize("aud", ["billing", ["reports", "billing"]], ids=["string", "list-holding-it"])
def test_with_an_audience_set_a_token_for_it_is_accepted(reconfigure, aud):
    billing, _ = reconfigure(jwt_audience="billing")
    assert_accepted(billing.post(token=hs256(claims_for(billing.caller.id, aud=aud))))


@pytest.mark.parametrize(
    "aud", [None, "reports", ["reports", "admin"], "", ["billing-x"], "billin"],
    ids=["missing", "other", "list-without-it", "empty", "list-of-a-longer-name", "prefix"],
)
def test_with_an_audience_set_a_token_not_for_it_is_401(reconfigure, aud):
    billing, _ = reconfigure(jwt_audience="billing")
    claims = claims_for(billing.caller.id) | ({} if aud is None else {"aud": aud})
    billing.assert_token_refused(hs256(claims), "not meant for this service")


def test_without_an_audience_set_a_token_naming_one_is_401(billing):
    # RFC 7519: a token naming audiences is for them; this service is not known to be one.
    billing.assert_token_refused(hs256(claims_for(billing.caller.id, aud="billing")))


def test_without_an_audience_set_a_token_without_one_is_accepted(billing):
    assert_accepted(billing.post(token=hs256(claims_for(billing.caller.id))))


# --- issuer ---------------------------------------------------------------------------

ISSUER = "https://id.example/"


def test_with_an_issuer_set_a_token_from_it_is_accepted(reconfigure):
    billing, _ = reconfigure(jwt_issuer=ISSUER)
    assert_accepted(billing.post(token=hs256(claims_for(billing.caller.id, iss=ISSUER))))


@pytest.mark.parametrize(
    "iss", [None, "https://evil.example/", "https://id.example", ["https://id.example/"]],
    ids=["missing", "other", "without-trailing-slash", "list"],
)
def test_with_an_issuer_set_a_token_from_another_is_401(reconfigure, iss):
    billing, _ = reconfigure(jwt_issuer=ISSUER)
    claims = claims_for(billing.caller.id) | ({} if iss is None else {"iss": iss})
    billing.assert_token_refused(hs256(claims))


def test_without_an_issuer_set_any_issuer_is_accepted(billing):
    assert_accepted(billing.post(token=hs256(claims_for(billing.caller.id, iss="https://anyone.example/"))))


def test_audience_and_issuer_are_both_checked(reconfigure):
    billing, _ = reconfigure(jwt_audience="billing", jwt_issuer=ISSUER)
    assert_accepted(billing.post(token=hs256(claims_for(billing.caller.id, aud="billing", iss=ISSUER))))
    billing.assert_token_refused(hs256(claims_for(billing.caller.id, aud="billing")), "issuer")
    billing.assert_token_refused(hs256(claims_for(billing.caller.id, iss=ISSUER)), "not meant")


# --- lifetime -------------------------------------------------------------------------

YEAR_9999 = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


@pytest.mark.parametrize("with_iat", [True, False], ids=["with-iat", "without-iat"])
def test_a_token_expiring_in_the_year_9999_is_401(billing, with_iat):
    claims = claims_for(billing.caller.id) | {"exp": YEAR_9999}
    if not with_iat:
        del claims["iat"]
    billing.assert_token_refused(hs256(claims), f"longer than the {DAY} seconds this service accepts")


def test_a_token_issued_for_longer_than_the_maximum_is_401_even_with_less_left(billing):
    # Issued two hours ago for 25 hours: 23 hours left, but refused all its life.
    now = dt.datetime.now(dt.UTC)
    claims = claims_for(billing.caller.id) | {"iat": now - dt.timedelta(hours=2), "exp": now + dt.timedelta(hours=23)}
    billing.assert_token_refused(hs256(claims), "longer than")


def test_a_token_issued_for_exactly_the_maximum_is_accepted(billing):
    issued_at = int(time.time())
    claims = {"sub": str(billing.caller.id), "iat": issued_at, "exp": issued_at + DAY}
    assert_accepted(billing.post(token=hs256(claims)))


def test_a_token_without_iat_is_judged_by_what_it_has_left(billing):
    assert_accepted(billing.post(token=hs256({"sub": str(billing.caller.id), "exp": int(time.time()) + DAY - 5})))
    too_long = {"sub": str(billing.caller.id), "exp": int(time.time()) + DAY + 60}
    billing.assert_token_refused(hs256(too_long), "longer than")


def test_a_shorter_configured_maximum_refuses_the_default_hour_token(reconfigure, factory):
    billing, _ = reconfigure(jwt_max_lifetime_seconds=600)
    billing.assert_token_refused(factory.jwt(billing.caller), "longer than the 600 seconds")
    assert_accepted(billing.post(token=factory.jwt(billing.caller, ttl_seconds=600)))


# --- not yet valid --------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_valid_until_later_is_401(billing, claim):
    claims = claims_for(billing.caller.id) | {claim: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)}
    billing.assert_token_refused(hs256(claims), "not valid yet")


def test_a_token_whose_nbf_has_passed_is_accepted(billing):
    claims = claims_for(billing.caller.id, nbf=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    assert_accepted(billing.post(token=hs256(claims)))


# --- tokens mint ----------------------------------------------------------------------


def mint(app, *args: str):
    return OperatorCliRunner(app).invoke(args=["tokens", "mint", *args])


def test_tokens_mint_refuses_a_ttl_above_the_maximum(reconfigure):
    billing, app = reconfigure(jwt_max_lifetime_seconds=600)
    result = mint(app, "--user", str(billing.caller.id), "--ttl-seconds", "601")
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "--ttl-seconds" in error and "JWT_MAX_LIFETIME_SECONDS (600)" in error, error
    assert result.stdout == ""


def test_tokens_mint_refuses_a_ttl_above_the_default_maximum(billing, app):
    result = mint(app, "--user", str(billing.caller.id), "--ttl-seconds", str(DAY + 1))
    assert result.exit_code == 2 and "JWT_MAX_LIFETIME_SECONDS (86400)" in result.stderr, result.output


def test_tokens_mint_at_the_maximum_gives_an_accepted_token(billing, app):
    result = mint(app, "--user", str(billing.caller.id), "--ttl-seconds", str(DAY))
    assert result.exit_code == 0, result.output
    assert_accepted(billing.post(token=result.stdout.splitlines()[-1]))


def test_tokens_mint_defaults_to_the_maximum_when_it_is_under_an_hour(reconfigure):
    billing, app = reconfigure(jwt_max_lifetime_seconds=600)
    result = mint(app, "--user", str(billing.caller.id))
    token = result.stdout.splitlines()[-1]
    claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 600
    assert_accepted(billing.post(token=token))


def test_tokens_mint_carries_the_configured_audience_and_issuer(reconfigure):
    billing, app = reconfigure(jwt_audience="billing", jwt_issuer=ISSUER)
    result = mint(app, "--user", str(billing.caller.id))
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[-1]
    claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], audience="billing", issuer=ISSUER)
    assert (claims["aud"], claims["iss"]) == ("billing", ISSUER)
    assert_accepted(billing.post(token=token))
