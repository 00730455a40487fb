"""The pipeline's tests (``worker``): recording, pricing, reporting to Stripe, Stripe's error
reports, real worker processes, fuzzing through the whole pipeline. Their fixtures are the
suite's (tests/conftest.py); the expected costs, ``Load`` and ``assert_billed_exactly_once``
are in ``tests.support.expected_bills``."""
