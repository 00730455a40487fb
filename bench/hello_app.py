"""The ceiling for the ingest benchmark: a Flask POST that parses the JSON and answers 202.

``create_app(redis_round_trip=True)`` also waits for one Redis round trip (PING, on the
broker, through the same client the endpoint publishes with) before it answers: the
ceiling of any endpoint that must hear back from Redis before it may answer 202.
"""

import os

from flask import Flask, jsonify, request


def create_app(redis_round_trip: bool = False) -> Flask:
    app = Flask(__name__)
    if redis_round_trip:
        from shared.intake import Intake

        broker = Intake(os.environ["CELERY_BROKER_URL"], timeout_seconds=1.0)

    @app.post("/api/billing/external-usage")
    def hello():
        body = request.get_json()
        if redis_round_trip:
            broker.redis.ping()
        return jsonify(id="00000000-0000-0000-0000-000000000000", status="queued", fields=len(body)), 202

    return app
