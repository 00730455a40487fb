"""Operator commands: ``flask --app ingest_api <command>``.

The package stands beside the edge (``ingest_api``) and the pipeline (``worker``) and
calls their functions (the intake's, the recorder's, the reporter's): it never writes
to Redis or Stripe by hand. Neither of them imports it (``tests/test_layout.py`` checks). Flask finds the command groups through the
``flask.commands`` entry points in ``setup.cfg``.

Each command that creates or changes something prints its id (or token) alone on its last
line of standard output, so scripts can capture it (``ID=$(flask ... | tail -1)``); anything
meant for a human goes to standard error. Listings print tables (``output``), or one JSON
document with ``--json``. Errors are one line on standard error with a non-zero exit
code. One module per command group; shared helpers in ``store``, ``parameters`` and
``output``.
"""

