"""The HTTP edge: authenticates callers, validates usage events and appends them to the
intake, then answers; it also serves the status, health, metrics, OpenAPI, ``/docs`` and
Stripe webhook endpoints. ``create_app`` is the factory.

It never computes a price or calls Stripe's meter API: that is the pipeline's
(``worker``). It imports ``shared`` only, never ``worker`` or ``operator_cli``
(``tests/test_layout.py`` checks).
"""

from __future__ import annotations

from flask import Flask

from shared.config import Settings, get_settings

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SETTINGS"] = settings or get_settings()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False

    from ingest_api import docs, errors, observability, openapi, operations, stripe_events, usage
    from ingest_api.auth import CallerCache
    from ingest_api.catalog import Catalog
    from ingest_api.credentials import JwtVerifier
    from ingest_api.lookup_limits import LookupLimits
    from shared.intake import Intake

    settings = app.config["SETTINGS"]
    app.extensions["catalog"] = Catalog(settings.database_url, settings.catalog_cache_seconds)
    app.extensions["intake"] = Intake(
        settings.broker_url, settings.enqueue_timeout_seconds, group_window_seconds=settings.accept_group_window_seconds
    )
    app.extensions["caller_cache"] = CallerCache(settings.auth_cache_seconds)
    app.extensions["lookup_limits"] = LookupLimits()
    app.extensions["jwt_verifier"] = JwtVerifier.from_settings(settings)
    errors.register(app)
    observability.register(app)
    app.register_blueprint(operations.blueprint)
    app.register_blueprint(usage.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(stripe_events.blueprint)
    app.register_blueprint(docs.blueprint)
    return app
