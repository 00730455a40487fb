"""The development helpers shared by the tests, the soak, the benchmarks and the scripts:
nothing here is part of the service, and the service's packages never import it.

* ``children``: a child process of the service started in a process group of its own,
  waited for, stopped with its whole group, its log tailed; ``wait_until`` and HTTP probes;
  the Procfile's commands;
* ``servers``: which PostgreSQL and Redis a run uses (the configured ones, else this
  machine's), and a throwaway migrated database of a run's own on such a server.

It stands on ``shared`` alone (the migrations), never on ``tests``
(``tests/test_layout.py`` checks); importing it starts nothing.
"""
