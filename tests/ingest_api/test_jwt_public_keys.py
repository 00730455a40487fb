"""RS256/ES256 access tokens verified with public keys: ``JWT_PUBLIC_KEY`` (one PEM key)
or ``JWT_JWKS_URL`` (a real JWKS endpoint on 127.0.0.1, served from a thread here).

Each key verifies only the algorithm its type is pinned to; the token's header never
chooses it. HS256 with ``JWT_SECRET`` stays accepted beside the public keys. A JWKS
endpoint that is down, failing, slow or answering nonsense gives 503 with
``Retry-After`` within a couple of seconds, never a 500; a ``kid`` the endpoint does not
publish gives 401. Verified callers stay cached until their token's ``exp``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time

import jwt
import pytest

from ingest_api.jwks import MAX_FETCHES_AT_ONCE
from tests.support.billing import TEST_JWT_SECRET
from tests.support.error_answers import assert_error, assert_unauthorized
from tests.support.jwt_tokens import (
    JwksServer,
    b64url,
    claims_for,
    ec_key,
    hs256_with_raw_key,
    jwk,
    public_pem,
    rsa_key,
    signed,
    unsigned,
)

# How long a request may take when the JWKS endpoint does not answer: the wait for a
# fetch (2 s), and the rest of the request.
WORST_CASE_SECONDS = 3.5


def assert_accepted(response) -> None:
    assert response.status_code == 202, response.get_json()


def assert_unavailable_answer(response) -> None:
    body = assert_error(response, 503)
    assert "keys that verify access tokens" in body["error"], body
    assert response.headers.get("Retry-After", "").isdigit(), response.headers


def assert_keys_unavailable(billing, token: str) -> None:
    """Posting with ``token`` is 503 with ``Retry-After``, within bounded time, and queues nothing."""
    before = len(billing.queued())
    started = time.monotonic()
    assert_unavailable_answer(billing.post(token=token))
    assert time.monotonic() - started < WORST_CASE_SECONDS
    assert len(billing.queued()) == before


# --- one PEM public key ---------------------------------------------------------------


@pytest.fixture(params=["RS256", "ES256"])
def pem_setup(request, reconfigure):
    """The billing world with ``JWT_PUBLIC_KEY`` an RSA or a P-256 key: (billing, private key, algorithm)."""
    private_key = rsa_key() if request.param == "RS256" else ec_key()
    billing, _ = reconfigure(jwt_public_key=public_pem(private_key))
    return billing, private_key, request.param


def test_a_token_signed_with_the_configured_key_is_accepted(pem_setup):
    billing, private_key, algorithm = pem_setup
    assert_accepted(billing.post(token=signed(claims_for(billing.caller.id), private_key, algorithm)))


def test_hs256_with_jwt_secret_is_still_accepted_beside_a_public_key(pem_setup):
    billing, _, _ = pem_setup
    assert_accepted(billing.post(token=billing.jwt))


def test_a_token_signed_by_another_key_is_401(pem_setup):
    billing, _, algorithm = pem_setup
    other = rsa_key("b") if algorithm == "RS256" else ec_key("b")
    billing.assert_token_refused(signed(claims_for(billing.caller.id), other, algorithm))


def test_hs256_signed_with_the_public_key_is_401(pem_setup):
    # The confusion attack: the public key, which anyone may have, used as an HMAC secret.
    billing, private_key, _ = pem_setup
    pem = public_pem(private_key)
    for secret in (pem.encode(), pem.strip().encode()):
        billing.assert_token_refused(hs256_with_raw_key(claims_for(billing.caller.id), secret))


def test_alg_none_is_401_with_a_public_key(pem_setup):
    billing, _, _ = pem_setup
    claims = claims_for(billing.caller.id)
    for token in (unsigned(claims), unsigned(claims).rstrip(".")):
        billing.assert_token_refused(token)


def test_the_configured_key_under_another_algorithm_is_401(reconfigure):
    billing, _ = reconfigure(jwt_public_key=public_pem(rsa_key()))
    for algorithm in ("RS512", "PS256"):
        billing.assert_token_refused(signed(claims_for(billing.caller.id), rsa_key(), algorithm))
    # An EC-signed token offered to an RSA key.
    billing.assert_token_refused(signed(claims_for(billing.caller.id), ec_key(), "ES256"))


def test_the_claims_are_checked_for_public_key_tokens_too(reconfigure):
    billing, _ = reconfigure(jwt_public_key=public_pem(rsa_key()), jwt_audience="billing")
    far = claims_for(billing.caller.id, aud="billing") | {"exp": dt.datetime(9999, 1, 1, tzinfo=dt.UTC)}
    billing.assert_token_refused(signed(far, rsa_key(), "RS256"), "longer than")
    billing.assert_token_refused(signed(claims_for(billing.caller.id, aud="x"), rsa_key(), "RS256"))
    billing.assert_token_refused(signed(claims_for(billing.caller.id), rsa_key(), "RS256"))


# --- a JWKS endpoint ------------------------------------------------------------------


@pytest.fixture
def jwks_server():
    server = JwksServer()
    server.keys = [jwk(rsa_key(), "rsa-a"), jwk(ec_key(), "ec-a")]
    yield server
    server.stop()


@pytest.fixture
def jwks_world(reconfigure, jwks_server):
    """The billing world with ``JWT_JWKS_URL`` pointing at ``jwks_server``: (billing, app)."""
    return reconfigure(jwt_jwks_url=jwks_server.url)


def rs256(billing, kid: str = "rsa-a", private_key=None, **claims) -> str:
    return signed(claims_for(billing.caller.id, **claims), private_key or rsa_key(), "RS256", kid)


def test_tokens_signed_with_published_keys_are_accepted_after_one_fetch(jwks_world, jwks_server):
    billing, _ = jwks_world
    assert_accepted(billing.post(token=rs256(billing)))
    assert_accepted(billing.post(token=signed(claims_for(billing.caller.id), ec_key(), "ES256", "ec-a")))
    assert jwks_server.requests == 1


def test_a_kid_pointing_nowhere_is_401_and_asks_the_endpoint_at_most_every_few_seconds(jwks_world, jwks_server):
    billing, _ = jwks_world
    billing.assert_token_refused(rs256(billing, kid="nowhere"), "signing key (kid) is unknown")
    assert jwks_server.requests == 1
    # Made-up kids in a row do not each cost a fetch.
    for kid in ("nowhere-2", "nowhere-3", "../../etc/passwd"):
        billing.assert_token_refused(rs256(billing, kid=kid), "signing key (kid) is unknown")
    assert jwks_server.requests == 1


def test_a_token_without_a_kid_is_401(jwks_world):
    billing, _ = jwks_world
    token = signed(claims_for(billing.caller.id), rsa_key(), "RS256")
    billing.assert_token_refused(token, "names no signing key")


def test_a_published_kid_on_a_token_signed_by_another_key_is_401(jwks_world):
    billing, _ = jwks_world
    billing.assert_token_refused(rs256(billing, private_key=rsa_key("b")))
    forged = signed(claims_for(billing.caller.id), ec_key("b"), "ES256", "ec-a")
    billing.assert_token_refused(forged)


def test_a_key_under_the_algorithm_of_another_key_type_is_401(jwks_world):
    # The EC key's kid on an RS256 token; the RSA key's kid on an ES256 token.
    billing, _ = jwks_world
    billing.assert_token_refused(rs256(billing, kid="ec-a"))
    billing.assert_token_refused(signed(claims_for(billing.caller.id), ec_key(), "ES256", "rsa-a"))
    billing.assert_token_refused(signed(claims_for(billing.caller.id), rsa_key(), "RS512", "rsa-a"))


def test_algorithm_confusion_with_a_published_key_is_401(jwks_world, jwks_server):
    billing, _ = jwks_world
    claims = claims_for(billing.caller.id)
    published = json.dumps(jwks_server.keys[0]).encode()
    for secret in (public_pem(rsa_key()).encode(), published):
        billing.assert_token_refused(hs256_with_raw_key(claims, secret, kid="rsa-a"))
    billing.assert_token_refused(unsigned(claims, kid="rsa-a"))


def test_a_shared_secret_published_in_the_jwks_signs_nothing(reconfigure, jwks_server):
    # kty "oct" is an HMAC secret: a JWKS is public, so HS256 only ever means JWT_SECRET.
    secret = b"published-for-everyone-to-read-0123456789"
    jwks_server.keys.append({"kty": "oct", "k": b64url(secret), "kid": "hmac", "alg": "HS256", "use": "sig"})
    billing, _ = reconfigure(jwt_jwks_url=jwks_server.url)
    assert_accepted(billing.post(token=rs256(billing)))  # the set is fetched and in use
    billing.assert_token_refused(hs256_with_raw_key(claims_for(billing.caller.id), secret, kid="hmac"))


def test_a_published_key_declared_for_another_algorithm_is_not_used(reconfigure, jwks_server):
    jwks_server.keys = [jwk(rsa_key(), "rsa-a"), jwk(rsa_key("b"), "rsa-512", alg="RS512")]
    billing, _ = reconfigure(jwt_jwks_url=jwks_server.url)
    assert_accepted(billing.post(token=rs256(billing)))
    billing.assert_token_refused(signed(claims_for(billing.caller.id), rsa_key("b"), "RS512", "rsa-512"))
    billing.assert_token_refused(rs256(billing, kid="rsa-512", private_key=rsa_key("b")), "signing key (kid) is unknown")


def test_a_rotated_in_key_is_fetched_when_a_token_first_names_it(jwks_world, jwks_server):
    billing, app = jwks_world
    assert_accepted(billing.post(token=rs256(billing)))
    jwks_server.keys.append(jwk(rsa_key("b"), "rsa-b"))
    new = rs256(billing, kid="rsa-b", private_key=rsa_key("b"))

    # Within a few seconds of the last fetch the endpoint is not asked again...
    billing.assert_token_refused(new, "unknown")
    assert jwks_server.requests == 1
    # ...after that, the first token naming the new kid fetches it.
    app.extensions["jwt_verifier"].jwks.refetch_seconds = 0
    response = billing.post(token=new)
    assert_accepted(response)
    assert jwks_server.requests == 2


def test_a_verified_jwks_caller_is_served_from_memory(jwks_world, jwks_server):
    billing, app = jwks_world
    token = rs256(billing)
    assert_accepted(billing.post(token=token))
    assert_accepted(billing.post(token=token))  # the caller cache
    app.extensions["caller_cache"].ttl_seconds = 0
    assert_accepted(billing.post(token=token))  # verified again, with the cached key
    assert jwks_server.requests == 1


# --- the JWKS endpoint unavailable: 503 in bounded time, never a 500 ------------------


def wait_for_the_fetches_to_end() -> None:
    """Until every JWKS fetch thread of this process has ended."""
    for fetch in [thread for thread in threading.enumerate() if thread.name == "jwks-fetch"]:
        fetch.join(10)
        assert not fetch.is_alive()


def timed_post(billing, token):
    started = time.monotonic()
    response = billing.post(token=token)
    return response, time.monotonic() - started


def test_an_endpoint_that_refuses_connections_gives_503(reconfigure, jwks_server):
    jwks_server.stop()
    billing, _ = reconfigure(jwt_jwks_url=jwks_server.url)
    assert_keys_unavailable(billing, rs256(billing))
    # The other credentials do not depend on it.
    assert_accepted(billing.post(token=billing.jwt))
    assert_accepted(billing.post(token=billing.app_password))


@pytest.mark.parametrize(
    "status, body",
    [(500, None), (404, b"not found"), (200, b"<html>login</html>"), (200, b"[]"), (200, b'{"keys": []}'),
     (200, b'{"keys": [{"kty": "RSA", "kid": "broken", "n": "AQAB"}]}')],
    ids=["500", "404", "html", "json-array", "no-keys", "broken-key"],
)
def test_an_endpoint_answering_no_usable_key_set_gives_503(jwks_world, jwks_server, status, body):
    billing, _ = jwks_world
    jwks_server.status, jwks_server.body = status, body
    assert_keys_unavailable(billing, rs256(billing))


def test_a_slow_endpoint_gives_503_within_the_timeout_even_to_many_requests_at_once(jwks_world, jwks_server):
    billing, app = jwks_world
    jwks_server.stall()
    results = []

    def post():  # each thread with a client of its own
        results.append(timed_post(dataclasses.replace(billing, client=app.test_client()), rs256(billing)))

    threads = [threading.Thread(target=post) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < WORST_CASE_SECONDS
    assert len(results) == len(threads)
    for response, _ in results:
        assert_unavailable_answer(response)
    billing.assert_nothing_queued()
    assert jwks_server.requests == 1  # one fetch at a time, shared by everyone waiting

    # Once the endpoint answers again, so does the service, though that fetch still trickles.
    jwks_server.recover()
    app.extensions["jwt_verifier"].jwks.refetch_seconds = 0
    assert_accepted(billing.post(token=rs256(billing)))


def test_the_first_request_after_the_endpoint_recovers_is_answered_while_the_old_fetch_still_hangs(jwks_world, jwks_server):
    """A fetch older than a request's wait is not joined: the next request fetches anew
    (here at once: no pause between fetches). What the old fetch brings back later,
    a failure here, changes nothing."""
    billing, app = jwks_world
    keys = app.extensions["jwt_verifier"].jwks
    keys.refetch_seconds = 0
    jwks_server.stall()
    assert_keys_unavailable(billing, rs256(billing))  # waited its 2 s on the fetch, which goes on

    jwks_server.recover()
    response, seconds = timed_post(billing, rs256(billing))
    assert_accepted(response)
    assert seconds < 1
    assert jwks_server.requests == 2

    jwks_server.end_stalled()
    wait_for_the_fetches_to_end()  # the old fetch, failing
    keys.refetch_seconds = 60
    app.extensions["caller_cache"].ttl_seconds = 0  # each token's key looked up again
    assert_accepted(billing.post(token=rs256(billing)))
    billing.assert_token_refused(rs256(billing, kid="rsa-z"), "unknown")  # 401: the set fetched last lacks it
    assert jwks_server.requests == 2


def test_an_endpoint_that_trickles_holds_at_most_a_few_fetches_at_once(jwks_world, jwks_server):
    billing, app = jwks_world
    keys = app.extensions["jwt_verifier"].jwks
    keys.refetch_seconds = 0
    keys.timeout_seconds = 0.5  # each request waits that long; the trickle never lets a read time out
    jwks_server.stall()
    for _ in range(MAX_FETCHES_AT_ONCE + 2):
        assert_keys_unavailable(billing, rs256(billing))
    assert jwks_server.requests == MAX_FETCHES_AT_ONCE

    # Past that many, one more starts only once the last has run for a minute.
    jwks_server.recover()
    assert_keys_unavailable(billing, rs256(billing))
    assert jwks_server.requests == MAX_FETCHES_AT_ONCE
    keys.give_up_seconds = 0
    assert_accepted(billing.post(token=rs256(billing)))
    assert jwks_server.requests == MAX_FETCHES_AT_ONCE + 1


def test_a_failed_fetch_is_retried_only_after_a_few_seconds(jwks_world, jwks_server):
    billing, app = jwks_world
    jwks_server.status = 500
    assert_keys_unavailable(billing, rs256(billing))
    jwks_server.status = 200
    assert_keys_unavailable(billing, rs256(billing))
    assert jwks_server.requests == 1
    app.extensions["jwt_verifier"].jwks.refetch_seconds = 0
    assert_accepted(billing.post(token=rs256(billing)))


def test_known_keys_keep_verifying_while_the_endpoint_is_down_for_a_while(jwks_world, jwks_server):
    billing, app = jwks_world
    app.extensions["caller_cache"].ttl_seconds = 0
    assert_accepted(billing.post(token=rs256(billing)))
    keys = app.extensions["jwt_verifier"].jwks
    jwks_server.stall()  # as slow as it gets
    keys.fresh_seconds = keys.refetch_seconds = 0  # the set is due for a refresh

    # Served from the last keys, without waiting for the refresh under way.
    response, seconds = timed_post(billing, rs256(billing))
    assert_accepted(response)
    assert seconds < 1
    jwks_server.wait_for_requests(2)  # the refresh, in its own thread, reaches the endpoint
    assert jwks_server.requests == 2

    # Past the stale limit, the old keys are no longer trusted.
    keys.stale_seconds = 0
    assert_keys_unavailable(billing, rs256(billing))


# --- verified callers cached until their token's own exp, whatever the key ------------


@pytest.mark.parametrize("key_type", ["hs256", "pem-rs256", "jwks-es256"])
def test_a_cached_caller_is_not_trusted_past_its_tokens_exp(reconfigure, jwks_server, key_type):
    if key_type == "hs256":
        billing, app = reconfigure()
        make = lambda claims: jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")  # noqa: E731
    elif key_type == "pem-rs256":
        billing, app = reconfigure(jwt_public_key=public_pem(rsa_key()))
        make = lambda claims: signed(claims, rsa_key(), "RS256")  # noqa: E731
    else:
        billing, app = reconfigure(jwt_jwks_url=jwks_server.url)
        make = lambda claims: signed(claims, ec_key(), "ES256", "ec-a")  # noqa: E731
    app.extensions["caller_cache"].ttl_seconds = 3600
    expires = int(time.time()) + 2
    token = make({"sub": str(billing.caller.id), "exp": expires})

    assert_accepted(billing.post(token=token))
    assert_accepted(billing.post(token=token))
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    assert_unauthorized(billing.post(token=token))
    assert len(billing.queued()) == 2


