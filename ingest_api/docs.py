"""``GET /docs``: the interactive reference (Swagger UI) rendered from ``/openapi.json``.

Swagger UI's files come from the installed ``flask-swagger-ui`` package (its ``dist``
folder, Swagger UI 5, which reads OpenAPI 3.1) and are served from here, so the page
needs no network beyond this service. Its Content-Security-Policy lets the page load
and call nothing but this origin. The page needs no credential; the requests made from
it carry the Bearer token pasted into its "Authorize" dialog, kept in the page's memory
only.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, abort, render_template_string, send_from_directory

blueprint = Blueprint("docs", __name__, url_prefix="/docs")

SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).parent / "dist"
# The files of Swagger UI the page uses; nothing else of the package is served.
_ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})

_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # Swagger UI's React components set inline styles.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Agent700 external usage billing: API reference</title>
  <link rel="stylesheet" href="{{ url_for('docs.asset', name='index.css') }}">
  <link rel="stylesheet" href="{{ url_for('docs.asset', name='swagger-ui.css') }}">
  <link rel="icon" type="image/png" href="{{ url_for('docs.asset', name='favicon-32x32.png') }}" sizes="32x32">
  <link rel="icon" type="image/png" href="{{ url_for('docs.asset', name='favicon-16x16.png') }}" sizes="16x16">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{{ url_for('openapi.openapi_json') }}"></div>
  <script src="{{ url_for('docs.asset', name='swagger-ui-bundle.js') }}"></script>
  <script src="{{ url_for('docs.initializer') }}"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise send the document to an online validator.
# persistAuthorization false: the pasted token is never written to the browser's storage.
_INITIALIZER = """"use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0
  });
});
"""


def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("", strict_slashes=False)
def page():
    return _page_headers(Response(render_template_string(_PAGE), mimetype="text/html"))


@blueprint.get("/swagger-initializer.js")
def initializer():
    return _page_headers(Response(_INITIALIZER, mimetype="text/javascript"))


@blueprint.get("/<name>")
def asset(name: str):
    if name not in _ASSETS:
        abort(404)
    return _page_headers(send_from_directory(SWAGGER_UI_DIR, name))
