"""gunicorn settings for the ``web`` process."""

import multiprocessing

from shared.config import get_settings

bind = f"0.0.0.0:{get_settings().port}"
# The edge is CPU-bound (JSON, validation, hashing) with short waits on Redis: one
# synchronous worker per core, plus one to cover those waits.
workers = multiprocessing.cpu_count() + 1
worker_class = "sync"
# A request is a few milliseconds; anything near this is stuck and should be recycled.
timeout = 30
# On SIGTERM, finish the requests in flight (they are answered 202 only once enqueued).
graceful_timeout = 20
keepalive = 5
# Create the app before forking; connections are opened lazily in each worker.
preload_app = True
accesslog = None
