"""What the tests share besides fixtures (importing any of it starts nothing and needs no
conftest; conftest modules hold only fixtures, and no test imports one):

* ``billing``: the contract's constants (URLs, the service and model names, ``PRICES``),
  rows created directly (``Factory``), the billable world (``build_world``), log rows as a
  worker writes them (``log_row``, ``UsageRecords``), the database as the tests read it;
* ``api_caller``: the world as the ingest API's caller (``Billing``), ``record_as_worker``;
* ``error_answers``: the shape of the API's error answer (``assert_error``);
* ``expected_bills``: what a load of events must cost (``Load``), ``assert_billed_exactly_once``;
* ``intake_stream``: the intake stream as the tests read it;
* ``operator_commands``: the operator commands run in-process, ``assert_refused``;
* ``service_processes``: the service's processes as the slow tests run them (worker,
  gunicorn, Flower, a private PostgreSQL and Redis);
* ``jwt_tokens``: keys, tokens and a real JWKS endpoint;
* ``stripe_sdk``: the real ``stripe`` SDK against the local Stripe server;
* ``http_probes``, ``log_lines``, ``timestamps``: requests to real servers, JSON log
  files, moments as API bodies write them;
* ``database``: the rolled-back test transaction.

Child processes and the servers a run uses are the development package's (``devtools``),
which the soak, the benchmarks and the scripts share.
"""
