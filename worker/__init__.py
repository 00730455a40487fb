"""The billing pipeline: Celery tasks that record accepted usage events (price, exact
costs, one row each), report them to Stripe's billing meter, handle Stripe's error
reports, and sweep for anything a lost wake-up left waiting; plus the Flower launcher.

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
