"""gunicorn settings for the ``web`` process."""

import multiprocessing

from gunicorn import glogging

from shared import structured_logging
from shared.config import get_settings

bind = f"0.0.0.0:{get_settings().port}"
# Synchronous workers, gunicorn's recommended (2 x cores) + 1: each request is mostly
# CPU (JSON, validation) but also waits on one Redis round trip, and the spare workers
# keep the cores busy during those waits.
workers = 2 * multiprocessing.cpu_count() + 1
worker_class = "sync"
# A request is a few milliseconds; anything near this is stuck and should be recycled.
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


def child_exit(server, worker):
    # Multiprocess metrics: a dead worker's live gauges must not be summed any more.
    from shared import metrics

    metrics.process_exited(worker.pid)
