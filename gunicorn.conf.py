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

# Access lines come from the app itself (one JSON line per request, with the event id);
# gunicorn's own error log uses the same JSON format.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "shared.structured_logging.RedactingJsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "process": "pid"},
        }
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        "alembic": {"level": "WARNING"},
    },
}


def child_exit(server, worker):
    # Multiprocess metrics: a dead worker's live gauges must not be summed any more.
    from shared import metrics

    metrics.process_exited(worker.pid)
