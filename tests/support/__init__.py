"""What the tests, the soak and the benchmarks share, and nothing that is a pytest fixture
(importing any of it starts nothing and needs no conftest):

* ``servers``: which PostgreSQL and Redis a run uses (the configured ones, else this
  machine's), for tests/conftest.py and bench/harness.py;
* ``children``: a child process of the service started in a process group of its own,
  waited for, stopped with its whole group, its log tailed; ``wait_until`` and an HTTP probe;
* ``billing``: the constants of the contract the tests use (URLs, the service and model
  names), rows created directly (``Factory``), the billable world (``build_world``), log
  rows as a worker writes them (``log_row``, ``UsageRecords``) and ``assert_refused`` for
  an operator command that refuses.
"""
