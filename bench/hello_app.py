"""The ceiling for the ingest benchmark: a Flask POST that parses the JSON and answers 202."""

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/api/billing/external-usage")
    def hello():
        body = request.get_json()
        return jsonify(id="00000000-0000-0000-0000-000000000000", status="queued", fields=len(body)), 202

    return app
