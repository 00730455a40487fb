"""What the HTTP edge (``ingest_api``), the billing pipeline (``worker``) and the operator
commands (``operator_cli``) all stand on.

It owns the configuration (``config``, read once, without side effects), the database
schema and sessions (``models``, ``db``, ``migrations``), a log row's life (``usage_rows``:
its states and every move between them), Stripe's meter as this service uses it
(``stripe_meter``) and its client (``stripe_client``), the reasons written for operators
(``operator_messages``), the intake stream and its one script (``intake``), App Password
revocation marks (``revocation_marks``), the Celery application's task names and wake-ups (``queue``), the
queue message (``usage_event``), metrics, structured logs, the backlog and pipeline status
that ``/metrics`` and Flower show, and the embedded servers of the local run
(``embedded``).

It must not import ``ingest_api``, ``worker`` or ``operator_cli``: they import it
(``tests/test_layout.py`` checks).
"""
