"""The billing pipeline: Celery tasks (``tasks``) that record accepted usage events
(``recording``: price, exact costs, one row each; ``rejected_events``: those that cannot be
billed), report them to Stripe's billing meter (``reporting``: shards and rounds;
``stripe_reporting``: the SDK calls), handle Stripe's error reports
(``stripe_error_reports``), and sweep for anything a lost wake-up left waiting
(``sweep_queries``); the operator's set-aside (``set_aside``); and the Flower launcher.
Every status change of a log row goes through ``shared.usage_rows``.

``celery --app worker`` finds the Celery application here as ``app``. It is loaded on
first use, so ``python -m worker.flower`` runs Flower without the pipeline's tasks (and
their metrics) in its process. It imports ``shared`` only, never ``ingest_api`` or
``operator_cli`` (``tests/test_layout.py`` checks).
"""


def __getattr__(name: str):
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
