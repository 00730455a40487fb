"""Keys, tokens and a real JWKS endpoint for the JWT tests.

The JWKS endpoint is an HTTP server on 127.0.0.1 in a thread of the test process; a
test changes what it publishes and how it misbehaves (an error status, an answer that
never ends, something that is not a key set) and counts how often it was asked.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()



@functools.cache
def rsa_key(name: str = "a", bits: int = 2048) -> rsa.RSAPrivateKey:
    """A private RSA key per name, made once per run (RSA key generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str = "a", curve: type = ec.SECP256R1) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve())


def public_pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(private_key) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def jwk(private_key, kid: str, **fields) -> dict:
    """The public JWK of ``private_key``, named ``kid``, as an identity provider publishes it."""
    public_key = private_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(public_key, as_dict=True)
    return data | {"kid": kid, "use": "sig"} | fields


def signed(claims: dict, private_key, algorithm: str, kid: str | None = None) -> str:
    return jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid} if kid is not None else None)


def hs256_with_raw_key(claims: dict, key: bytes, **header) -> str:
    """HS256 signed with arbitrary bytes as the HMAC key (a public key's PEM or JWK, the
    algorithm-confusion attack); PyJWT refuses to sign so, hence by hand."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"} | header).encode())
    body = b64url(json.dumps(claims, default=lambda moment: int(moment.timestamp())).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(signature)}"


def unsigned(claims: dict, **header) -> str:
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"} | header).encode())
    body = b64url(json.dumps(claims, default=lambda moment: int(moment.timestamp())).encode())
    return f"{head}.{body}."


def claims_for(user_id, *, ttl: dt.timedelta = dt.timedelta(minutes=10), **extra) -> dict:
    now = dt.datetime.now(dt.UTC)
    return {"sub": str(user_id), "iat": now, "exp": now + ttl} | extra


class JwksServer:
    """A JWKS endpoint at ``url``. ``keys`` is what it publishes; ``status`` (200) and
    ``body`` (None: the key set) shape its answer; ``requests`` counts the requests.

    ``stall()``: a request arriving from then on gets the status line, the headers and then
    one byte of the body every 0.1 s, never all of it: to the fetcher, an endpoint that
    answers too slowly to finish, without ever letting a socket read time out.
    ``recover()``: requests arriving from then on are answered at once, while the stalled
    ones go on trickling until ``end_stalled()`` (or ``stop()``) drops them mid-body."""

    TRICKLE_SECONDS = 0.1

    def __init__(self):
        self.keys: list[dict] = []
        self.status = 200
        self.body: bytes | None = None
        self.requests = 0
        self._arrived = threading.Condition()
        self._stall: threading.Event | None = None  # while stalled: set when the stalled requests end
        self._stalls: list[threading.Event] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server._arrived:
                    server.requests += 1
                    stall = server._stall
                    server._arrived.notify_all()
                if stall is not None:
                    self.trickle(stall)
                    return
                body = server.body if server.body is not None else json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def trickle(self, stall: threading.Event) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                try:
                    while not stall.wait(server.TRICKLE_SECONDS):
                        self.wfile.write(b" ")  # whitespace: JSON, and never the end of it
                except OSError:  # the fetcher gave up
                    pass

            def log_message(self, format, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="jwks-server", daemon=True)
        self._thread.start()

    def stall(self) -> None:
        with self._arrived:
            self._stall = threading.Event()
            self._stalls.append(self._stall)

    def recover(self) -> None:
        with self._arrived:
            self._stall = None

    def end_stalled(self) -> None:
        for stall in self._stalls:
            stall.set()

    def wait_for_requests(self, count: int, timeout: float = 10) -> None:
        """Until ``count`` requests have arrived in all."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: self.requests >= count, timeout), f"{self.requests} requests, not {count}"

    def stop(self) -> None:
        self.end_stalled()
        self._httpd.shutdown()
        self._httpd.server_close()
