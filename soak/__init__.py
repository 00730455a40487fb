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
* ``voids``: voids a share of the accepted events through the void endpoint while the
  load runs (at once and later, asked again, twice at once), with its own ledger of the
  answers.
* ``faults``: the fault schedule and how each fault is injected.
* ``report``: waits for the pipeline and the voids to drain, then reconciles the ledgers,
  the database and the Stripe server (its summaries and meter events, cancels and
  negative events applied) and writes the report.
"""
