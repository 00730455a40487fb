"""gunicorn settings for the ``web`` process: ``gunicorn --config python:shared.gunicorn_config``.

It lives in ``shared``, not ``ingest_api``, because importing ``ingest_api`` imports Flask
(and ssl) before the monkey patching below could run.

gevent workers: every connection is a greenlet, so a client that sends its request
slowly, or stalls half-way, holds a few KiB of memory and no worker. With the sync
workers of before, 20 connections dribbling one header line every 5 s left every other
caller (``/healthz`` included) unanswered for a minute. The libraries the request path
waits on cooperate with gevent: redis-py and the Stripe SDK through the patched socket
module, psycopg2 through psycogreen's wait callback (patched below, before anything
imports them).
"""

from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

import multiprocessing  # noqa: E402

from gunicorn import glogging  # noqa: E402

from shared import gunicorn_json_errors, structured_logging  # noqa: E402
from shared.config import get_settings  # noqa: E402

bind = f"{get_settings().host}:{get_settings().port}"
worker_class = "gevent"
# Each request is CPU (JSON, validation) plus one Redis round trip, and gevent overlaps
# the waits inside each process: a process per core, and one more for when one is busy
# with a large batch. (Measured with bench.ingest: 2 or 3 gevent processes on 2 cores
# answer 20-25 % more than 5; BENCHMARKS.md.)
workers = multiprocessing.cpu_count() + 1
worker_connections = 1000
# A worker whose loop stops answering for this long is recycled.
timeout = 30
# On SIGTERM, finish the requests in flight (they are answered 202 only once enqueued).
graceful_timeout = 20
keepalive = 5
# Create the app before forking; connections are opened lazily in each worker.
preload_app = True
# gunicorn >= 25.1's control socket is one fixed path per user ($XDG_RUNTIME_DIR/gunicorn.ctl
# or ~/.gunicorn/gunicorn.ctl): a second web process on the host takes it over and the
# first one to stop deletes it from under the other. Nothing here uses it; the service is
# scaled by starting web processes, and stopped with SIGTERM.
control_socket_disable = True


class JsonLogger(glogging.Logger):
    """gunicorn's logs as the app's: JSON lines on standard error, secrets redacted.

    The app writes one line per request itself (with the event id), so gunicorn's access
    log is off; turning it off here also spares building its atoms on every request.
    """

    access_log_enabled = False

    def setup(self, cfg):
        super().setup(cfg)
        structured_logging.configure()
        self.error_log.handlers[:] = []
        self.error_log.propagate = True


logger_class = JsonLogger


# gunicorn's own refusals (malformed requests) answer in the API's JSON error shape.
gunicorn_json_errors.apply()


def on_starting(server):
    # The master, once: its logs are JSON by now (JsonLogger), and its workers fork later.
    from shared import start_checks

    start_checks.check(get_settings())


def child_exit(server, worker):
    # Multiprocess metrics: a dead worker's live gauges must not be summed any more.
    from shared import metrics

    metrics.process_exited(worker.pid)
