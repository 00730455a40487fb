"""The soak run (issue 6): the whole service under steady load and scheduled faults, for
minutes, ending in a reconciliation of what was accepted against what reached Stripe.

    python -m soak --duration 300        (or: make soak DURATION=300)

One module per idea:

* ``cluster``: starts, stops, kills and restarts every process of its own (Redis,
  PostgreSQL, the local Stripe server, web, worker, beat), all on 127.0.0.1, all under
  one run directory ``var/soak/run-…``.
* ``seeding``: organizations, users, a service, prices and credentials, through the
  operator command line, as an operator would.
* ``load``: the load generator and its own ledger of every event id it was given, with
  the cost it must have, computed with its own ``Decimal`` arithmetic.
* ``faults``: the fault schedule and how each fault is injected.
* ``report``: waits for the pipeline to drain, then reconciles the ledger, the database
  and the Stripe server and writes the report.
"""
