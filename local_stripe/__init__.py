"""A small Stripe-compatible HTTP server for tests and the local run (Billing Meters only).

The real ``stripe`` SDK works against it unchanged::

    client = stripe.StripeClient("sk_test_...", base_addresses={"api": url, "meter_events": url})

Modules: ``app`` (routes), ``pipeline`` (what every Stripe call goes through), ``events``
(meter event validation rules), ``validator`` (the v2 stream's asynchronous validation and
its error reports), ``adjustments`` (meter event cancellation), ``destinations`` (the event
destination as the v2 API lists it), ``webhooks`` (signed delivery to the event
destination), ``state`` (the in-memory store), ``clock`` (the server's movable now),
``account`` (clock, store, settings and background threads together), ``faults`` (fault
injection and settings), ``wire`` (Stripe's wire formats), ``testing`` (servers in threads
for tests), ``__main__`` (``python -m local_stripe``).

It stands for Stripe, so it imports nothing of the service, and the service's own
packages never import it (``tests/test_layout.py`` checks); only tests, the soak, the
benches and the local run start it.
"""
