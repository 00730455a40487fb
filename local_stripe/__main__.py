"""``python -m local_stripe [--host 127.0.0.1] [--port 12111] [--validation-delay-seconds S]
[--summary-lag-seconds S] [--report-window-seconds S] [--webhook-url URL]
[--webhook-secret whsec_...]``: serve until interrupted.

Logs one line per request (werkzeug's access log). Point the Stripe SDK at it with
``base_addresses={"api": URL, "meter_events": URL}`` and any ``sk_test_...`` key.

The options after ``--port`` default to the environment variables
``LOCAL_STRIPE_VALIDATION_DELAY_SECONDS``, ``LOCAL_STRIPE_SUMMARY_LAG_SECONDS``,
``LOCAL_STRIPE_REPORT_WINDOW_SECONDS``, ``LOCAL_STRIPE_WEBHOOK_URL`` and
``LOCAL_STRIPE_WEBHOOK_SECRET``, else to Stripe's ways (``faults.py``: a 2 s summary lag,
60 s report windows); they are the server's defaults for the settings of the same names,
which ``/_local/faults`` can change and ``/_local/reset`` puts back.
"""

from __future__ import annotations

import argparse
import logging
import os

from werkzeug.serving import make_server

from local_stripe.app import create_app, state_of

log = logging.getLogger("local_stripe")

ENVIRONMENT = {
    "validation_delay_seconds": "LOCAL_STRIPE_VALIDATION_DELAY_SECONDS",
    "summary_lag_seconds": "LOCAL_STRIPE_SUMMARY_LAG_SECONDS",
    "report_window_seconds": "LOCAL_STRIPE_REPORT_WINDOW_SECONDS",
    "webhook_url": "LOCAL_STRIPE_WEBHOOK_URL",
    "webhook_secret": "LOCAL_STRIPE_WEBHOOK_SECRET",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="local-stripe", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument(
        "--validation-delay-seconds",
        type=float,
        default=os.environ.get(ENVIRONMENT["validation_delay_seconds"]),
        help="judge v2 stream events this long after receipt (default 1; 0: before answering)",
    )
    parser.add_argument(
        "--summary-lag-seconds",
        type=float,
        default=os.environ.get(ENVIRONMENT["summary_lag_seconds"]),
        help="count a valid event in summaries this long after receipt (default 2; 0: at once)",
    )
    parser.add_argument(
        "--report-window-seconds",
        type=float,
        default=os.environ.get(ENVIRONMENT["report_window_seconds"]),
        help="report invalid v2 events per window of this many seconds (default 60)",
    )
    parser.add_argument(
        "--webhook-url",
        default=os.environ.get(ENVIRONMENT["webhook_url"]),
        help="POST v2 events (thin) here (default: nowhere)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(ENVIRONMENT["webhook_secret"]),
        help="sign them with this whsec_... secret (default whsec_local_stripe)",
    )
    args = parser.parse_args(argv)
    settings = {name: getattr(args, name) for name in ENVIRONMENT if getattr(args, name) not in (None, "")}
    try:
        app = create_app(**settings)
    except ValueError as error:
        parser.error(str(error))

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = make_server(args.host, args.port, app, threaded=True)
    log.info("local Stripe server listening on http://%s:%d", args.host, server.server_port)
    faults = state_of(app).faults.snapshot()
    if faults["webhook_url"]:
        log.info("sending v2 events to %s, signed with %s", faults["webhook_url"], faults["webhook_secret"])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
