"""Stripe's wire protocol, the parts this server needs: errors, ids, form and time formats.

* v1 requests are form-encoded with bracket notation (``payload[value]=3``), v2 requests
  are JSON; both authenticate with ``Authorization: Bearer <key>`` (or Basic, the key as user name).
* Every error, v1 or v2, is ``{"error": {"type", "code"?, "message", "param"?}}``; the SDK
  picks its exception class from the HTTP status and ``type``.
* v1 times are Unix seconds; v2 times are RFC 3339 strings (``2024-06-01T12:00:00.000Z``).
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Iterable, Mapping
from typing import Any


class StripeError(Exception):
    """An error answer in Stripe's shape; raise it anywhere in a request to answer it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def missing(param: str) -> StripeError:
    return StripeError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def reject_unknown(params: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Stripe refuses parameters it does not know; so do we (it catches client typos)."""
    for name in params:
        if name not in allowed:
            param = f"{prefix}{name}"
            raise StripeError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def api_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization`` header: ``Bearer <key>``, or Basic auth with the key
    as the user name (``curl -u sk_test_...:``), as Stripe takes both; else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "basic" and token:
        try:
            token = base64.b64decode(token, validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return token or None
    return token if scheme.lower() == "bearer" and token else None


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs with bracket keys to nested dicts: ``a[b][c]=1`` -> ``{"a": {"b": {"c": "1"}}}``.

    List indexes (``expand[0]``) stay dict keys ("0"); nothing here needs real lists.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        path = [head] + [part.rstrip("]") for part in rest.split("[")] if rest else [head]
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return result


def rfc3339(timestamp: float) -> str:
    """Unix seconds to the RFC 3339 form the v2 API uses, with milliseconds and ``Z``."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """RFC 3339 (``Z`` or an offset required) to Unix seconds; ValueError otherwise."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return moment.timestamp()
