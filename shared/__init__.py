"""What the HTTP edge (``ingest_api``) and the billing pipeline (``worker``) both import."""
