"""The shape of the ingest API's error answer as the contract states it: one readable
sentence in ``error``, and ``details`` naming each field of a 422."""

from __future__ import annotations

import re

# "<one readable sentence>": starts with a capital, ends with a full stop, one line.
SENTENCE = re.compile(r"[A-Z][^\n]*[.!?]")


def assert_error(response, status: int, *, fields: list[str] | None = None) -> dict:
    """The answer is ``status`` with the contract's error body; with ``fields``, its
    ``details`` name exactly those fields (in any order, each once)."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json", response.headers
    body = response.get_json()
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "details"}, body
    assert isinstance(body["error"], str) and SENTENCE.fullmatch(body["error"]), body
    if fields is not None:
        details = body.get("details")
        assert isinstance(details, list) and details, body
        for detail in details:
            assert set(detail) == {"field", "message"}, detail
            assert isinstance(detail["message"], str) and detail["message"], detail
        assert sorted(d["field"] for d in details) == sorted(fields), body
    return body


def assert_unauthorized(response) -> dict:
    body = assert_error(response, 401)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers
    return body



