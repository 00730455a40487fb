"""A small Stripe-compatible HTTP server for tests and the local run (Billing Meters only).

The real ``stripe`` SDK works against it unchanged::

    client = stripe.StripeClient("sk_test_...", base_addresses={"api": url, "meter_events": url})

Modules: ``app`` (routes), ``pipeline`` (what every Stripe call goes through), ``events``
(meter event validation), ``state`` (the in-memory store), ``faults`` (fault injection),
``wire`` (Stripe's wire formats), ``testing`` (a server in a thread for tests),
``__main__`` (``python -m local_stripe``).
"""
