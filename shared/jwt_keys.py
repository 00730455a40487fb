"""Which algorithm a public key verifies with: fixed by the key's type, never by a token.

A key serves exactly one algorithm, so a token's ``alg`` header can neither downgrade a
key (``none``) nor turn a public key into an HMAC secret (the RS256/HS256 confusion).
Shared by the configuration (to refuse an unusable ``JWT_PUBLIC_KEY`` at start) and the
verifier (to pin each key, the configured one and each one a JWKS endpoint publishes).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# RSA keys shorter than this are within reach of factoring; NIST retired them in 2013.
MIN_RSA_KEY_BITS = 2048
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


def pinned_algorithm(key: object) -> str | None:
    """``RS256`` for an RSA public key of 2048 bits or more, ``ES256`` for a P-256 public
    key, ``None`` for anything else (private keys, other curves, HMAC secrets)."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_KEY_BITS:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def load_public_key(pem: str) -> tuple[object, str]:
    """The key of a PEM ``PUBLIC KEY`` and its pinned algorithm; ``ValueError`` with a
    readable sentence otherwise. Literal ``\\n`` stand for line breaks, for platforms
    whose environment variables hold one line."""
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    if "PRIVATE KEY" in text:
        raise ValueError("is a private key; give the public key only (openssl pkey -pubout)")
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise ValueError("is not a PEM public key (-----BEGIN PUBLIC KEY----- ...)") from None
    algorithm = pinned_algorithm(key)
    if algorithm is None:
        raise ValueError(f"must be an RSA key of at least {MIN_RSA_KEY_BITS} bits (RS256) or a P-256 EC key (ES256)")
    return key, algorithm
