"""The JWT settings as ``load_settings`` reads them: defaults that keep HS256 as it was,
and a clear ``ConfigurationError`` for each value the service could not use safely."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.config import ConfigurationError, load_settings
from tests.support.billing import TEST_JWT_SECRET
from tests.support.jwt_tokens import ec_key, private_pem, public_pem, rsa_key

BASE = {
    "DATABASE_URL": "postgresql://db.example/billing",
    "CELERY_BROKER_URL": "redis://redis.example:6379/0",
    "JWT_SECRET": TEST_JWT_SECRET,
    "STRIPE_API_KEY": "sk_test_config",
}


def load(**environ: str):
    return load_settings(BASE | environ)


def refused(**environ: str) -> str:
    with pytest.raises(ConfigurationError) as raised:
        load(**environ)
    return str(raised.value)


def test_unset_the_service_verifies_hs256_only_with_a_day_as_the_longest_lifetime():
    settings = load()
    assert settings.jwt_audience is None and settings.jwt_issuer is None
    assert settings.jwt_public_key is None and settings.jwt_jwks_url is None
    assert settings.jwt_max_lifetime_seconds == 86400


def test_audience_issuer_and_lifetime_are_read():
    settings = load(JWT_AUDIENCE="billing", JWT_ISSUER="https://id.example/", JWT_MAX_LIFETIME_SECONDS="600")
    assert (settings.jwt_audience, settings.jwt_issuer, settings.jwt_max_lifetime_seconds) == (
        "billing", "https://id.example/", 600,
    )


@pytest.mark.parametrize("value", ["0", "-60", "a day", "1.5"])
def test_a_lifetime_that_is_not_a_positive_integer_is_refused(value):
    assert "JWT_MAX_LIFETIME_SECONDS" in refused(JWT_MAX_LIFETIME_SECONDS=value)


def test_a_jwt_secret_is_still_required_with_a_public_key():
    environ = {k: v for k, v in BASE.items() if k != "JWT_SECRET"} | {"JWT_PUBLIC_KEY": public_pem(rsa_key())}
    with pytest.raises(ConfigurationError, match="JWT_SECRET is not set"):
        load_settings(environ)


@pytest.mark.parametrize("make_key", [rsa_key, ec_key], ids=["rsa", "ec-p256"])
def test_a_pem_public_key_is_accepted(make_key):
    pem = public_pem(make_key())
    assert load(JWT_PUBLIC_KEY=pem).jwt_public_key == pem


def test_a_pem_public_key_on_one_line_with_escaped_newlines_is_accepted():
    one_line = public_pem(rsa_key()).strip().replace("\n", "\\n")
    assert load(JWT_PUBLIC_KEY=one_line).jwt_public_key == one_line


@pytest.mark.parametrize(
    "pem, expected",
    [
        ("not a key", "is not a PEM public key"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is not a PEM public key"),
        (lambda: private_pem(rsa_key()), "is a private key"),
        (lambda: public_pem(rsa_key("short", bits=1024)), "at least 2048 bits"),
        (lambda: public_pem(ec_key("p384", ec.SECP384R1)), "P-256"),
    ],
    ids=["text", "broken-pem", "private-key", "rsa-1024", "ec-p384"],
)
def test_an_unusable_public_key_is_refused_with_a_sentence(pem, expected):
    message = refused(JWT_PUBLIC_KEY=pem() if callable(pem) else pem)
    assert message.startswith("JWT_PUBLIC_KEY ") and expected in message, message
    assert "PRIVATE" not in message and "MII" not in message  # the key itself is never echoed


@pytest.mark.parametrize(
    "url",
    [
        "https://id.example/.well-known/jwks.json",
        "http://127.0.0.1:8765/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:8765/jwks.json",
    ],
)
def test_a_jwks_url_over_https_or_to_loopback_is_accepted(url):
    assert load(JWT_JWKS_URL=url).jwt_jwks_url == url


@pytest.mark.parametrize(
    "url",
    ["http://id.example/.well-known/jwks.json", "file:///etc/jwks.json", "ftp://id.example/jwks", "id.example/jwks",
     "https:///jwks.json", "https://id.example:port/jwks"],
    ids=["http-remote", "file", "ftp", "no-scheme", "no-host", "bad-port"],
)
def test_a_jwks_url_that_is_not_https_is_refused(url):
    assert "JWT_JWKS_URL" in refused(JWT_JWKS_URL=url)


def test_a_public_key_and_a_jwks_url_together_are_refused():
    message = refused(JWT_PUBLIC_KEY=public_pem(rsa_key()), JWT_JWKS_URL="https://id.example/jwks.json")
    assert "not both" in message
