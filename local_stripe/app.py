"""The local Stripe server's Flask application. (Skeleton: endpoints come next.)"""

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)
    return app
