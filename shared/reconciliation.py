"""What marks a log row as needing reconciliation with Stripe before it may be re-sent.

The worker's sweeper sets this ``error`` on rows still unreported after Stripe's 24-hour
identifier window (a lost answer could have been a success, and Stripe would no longer
deduplicate a re-send); ``usage retry`` refuses to re-drive such rows unless told to.
"""

RECONCILE_ERROR = (
    "Not reported within Stripe's 24-hour identifier window; run `stripe reconcile` for its "
    "organization before retrying, so it cannot be counted twice."
)
