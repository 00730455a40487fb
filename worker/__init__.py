"""The billing pipeline: Celery tasks that record usage events and report them to Stripe.

``celery --app worker`` finds the Celery application here as ``app``. It is loaded on
first use, so ``python -m worker.flower`` runs Flower without the pipeline's tasks (and
their metrics) in its process.
"""


def __getattr__(name: str):
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
