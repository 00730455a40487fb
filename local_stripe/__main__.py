"""``python -m local_stripe [--host 127.0.0.1] [--port 12111]``: serve until interrupted.

Logs one line per request (werkzeug's access log). Point the Stripe SDK at it with
``base_addresses={"api": URL, "meter_events": URL}`` and any ``sk_test_...`` key.
"""

from __future__ import annotations

import argparse
import logging

from werkzeug.serving import make_server

from local_stripe.app import create_app

log = logging.getLogger("local_stripe")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="local-stripe", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = make_server(args.host, args.port, create_app(), threaded=True)
    log.info("local Stripe server listening on http://%s:%d", args.host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
