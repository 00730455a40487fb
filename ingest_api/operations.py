"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify

from shared import db

blueprint = Blueprint("operations", __name__)
READINESS_TIMEOUT_SECONDS = 2


@blueprint.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz():
    settings = current_app.config["SETTINGS"]
    failing = []
    try:
        with db.engine_for(settings.database_url).connect() as connection:
            connection.execute(sa.text(f"SET LOCAL statement_timeout = {READINESS_TIMEOUT_SECONDS * 1000}"))
            connection.execute(sa.text("SELECT 1"))
    except Exception:
        failing.append("database")
    try:
        broker = redis.Redis.from_url(
            settings.broker_url,
            socket_timeout=READINESS_TIMEOUT_SECONDS,
            socket_connect_timeout=READINESS_TIMEOUT_SECONDS,
        )
        broker.ping()
        broker.close()
    except Exception:
        failing.append("broker")
    if failing:
        response = jsonify(status="unavailable", error=f"Not ready: the {' and the '.join(failing)} did not answer.", failing=failing)
        response.status_code = 503
        return response
    return jsonify(status="ready")
