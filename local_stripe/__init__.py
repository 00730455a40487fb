"""A small Stripe-compatible HTTP server for tests and the local run (Billing Meters only)."""
