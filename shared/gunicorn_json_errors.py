"""A vendor patch: gunicorn's own refusals answer in the API's JSON error shape.

A request gunicorn refuses before the app sees it (a malformed request line or header,
headers too large, an unknown transfer coding) is answered by ``gunicorn.util.write_error``
with an HTML page; callers of this API get one JSON shape for every error instead. gunicorn
has no setting or hook for that body, so ``apply()`` replaces the function (gunicorn 22-25:
``util.write_error(sock, status_int, reason, mesg)``, called from its workers' request
handling). It is applied by the web's gunicorn settings (``shared.gunicorn_config``).
"""

from __future__ import annotations

import json

from gunicorn import util


def json_error(sock, status_int, reason, mesg):
    """The refusal as JSON, one sentence. It is the client's doing, so it is a 4xx:
    gunicorn's 501 for an unsupported transfer coding becomes 400."""
    status_int = 400 if status_int == 501 else status_int
    reason = "Bad Request" if status_int == 400 else reason
    body = json.dumps({"error": f"{reason}: {str(mesg).rstrip('.')}."}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def apply() -> None:
    util.write_error = json_error
