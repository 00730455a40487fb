"""Every error leaves as JSON: ``{"error": "<one sentence>"}`` (+ ``details`` for validation)."""

from __future__ import annotations

import sqlalchemy.exc
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

_READABLE = {
    404: "No such resource.",
    405: "This method is not allowed on this resource.",
    413: "The request body is larger than 64 KiB.",
}


class ApiError(Exception):
    """An error answer with a status, a sentence, optional details and headers."""

    def __init__(
        self, status: int, message: str, *, details: list[dict] | None = None, headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}  # fields of the body beside "error" and "details"


def error_response(
    status: int, message: str, *, details: list[dict] | None = None, headers: dict | None = None,
    extra: dict | None = None,
):
    body: dict = {"error": message}
    if details is not None:
        body["details"] = details
    body.update(extra or {})
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.message, details=error.details, headers=error.headers, extra=error.extra)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        message = _READABLE.get(error.code or 500) or (error.description or error.name)
        # Keep the exception's own headers (a 405's Allow, RFC 9110), not its HTML type.
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        return error_response(error.code or 500, message, headers=headers)

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    def _database_unavailable(error: Exception):
        # PostgreSQL restarting or unreachable (a caller or catalog entry not cached yet):
        # nothing was accepted, and a retry will likely succeed. Not a 500.
        app.logger.warning("database unavailable: %s", type(error).__name__)
        return error_response(
            503, "The database is unavailable; nothing was recorded. Retry later.", headers={"Retry-After": "2"}
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "Internal server error.")
