"""Structured logs: one JSON object per line, with the event id(s) a line is about.

Used by every process (web, worker, beat, CLI). A redacting filter scrubs anything shaped
like a credential (App Password, JWT, Stripe key, Bearer header value) from every line,
whatever a library or a message put there: billing logs are read by many, credentials by
none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys

_SECRETS = re.compile(
    r"app_a7_[A-Za-z0-9_-]+"  # App Passwords
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWTs (and session tokens of that shape)
    r"|\b(?:sk|rk|ek)_(?:test|live)_[A-Za-z0-9_]+"  # Stripe secret, restricted and ephemeral keys
    r"|(?<=Bearer )[^\s\"',]+",  # whatever follows a Bearer scheme
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# Lines that would repeat for every twice-a-second drain tick carry no news: the tasks log
# what they did (with event ids) themselves, and failures still come through as WARNING.
# The Stripe SDK logs two INFO lines of its own (logfmt inside our JSON) around every call;
# worker.stripe_reporting logs one line per call with its outcome, duration and event ids.
QUIET_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat", "alembic", "stripe")


# Every credential shape above contains one of these; most lines contain none, and a
# substring test is far cheaper than the expression.
_TELLTALES = ("app_a7_", "eyj", "k_test_", "k_live_", "bearer")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(telltale in lowered for telltale in _TELLTALES):
        return text
    return _SECRETS.sub(REDACTED, text)


# Every attribute a plain LogRecord has; anything else on a record came as ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Anything JSON cannot hold (UUIDs, times, Decimals) is written as its str().
_ENCODER = json.JSONEncoder(default=str)


class RedactingJsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger name, pid, message,
    the record's ``extra`` fields, then a traceback if there is one; redacted.

    Written here rather than taken from python-json-logger: the web writes one line per
    request, and that library's generic field handling cost the ingest endpoint about
    40 µs of CPU per request under load (5 % of its rate; BENCHMARKS.md). This builds
    the object in one pass.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "name": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return redact(_ENCODER.encode(line))


def formatter() -> RedactingJsonFormatter:
    return RedactingJsonFormatter()


def configure(level: int = logging.INFO) -> None:
    """Route the root logger to standard error as JSON lines; idempotent.

    Python warnings (``warnings.warn``, e.g. Celery's superuser warning) are routed
    through logging too (logger ``py.warnings``): otherwise they are printed as several
    plain-text lines, the only non-JSON lines of a process.
    """
    logging.captureWarnings(True)
    root = logging.getLogger()
    if any(isinstance(h.formatter, RedactingJsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The logging HOWTO's "Optimization": nothing reads the caller's file and line, thread
    # or multiprocessing names, and collecting them costs on every line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
