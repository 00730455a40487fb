"""The HTTP edge: authenticates, validates and enqueues usage events. ``create_app`` is the factory."""

from __future__ import annotations

from flask import Flask

from shared.config import Settings, get_settings

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SETTINGS"] = settings or get_settings()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False

    from ingest_api import cli, errors, operations

    errors.register(app)
    app.register_blueprint(operations.blueprint)
    cli.register(app)
    return app
