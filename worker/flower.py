"""Start Flower behind basic auth; refuse to start without ``FLOWER_BASIC_AUTH``."""

from __future__ import annotations

import os
import sys

from shared.config import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    if not settings.flower_basic_auth or ":" not in settings.flower_basic_auth:
        sys.exit("FLOWER_BASIC_AUTH must be set to user:password; Flower does not start without it.")
    # The credential goes through the environment, not argv, so `ps` does not show it.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    args = ["celery", "--app", "worker", "flower", *(argv if argv is not None else sys.argv[1:])]
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
