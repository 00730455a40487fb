"""Start Flower behind basic auth; refuse to start without ``FLOWER_BASIC_AUTH``.

``FLOWER_BASIC_AUTH`` is ``user:password`` (or several, comma-separated, as Flower takes
them); every entry needs a user and a password: an empty password is no protection.
"""

from __future__ import annotations

import os
import sys

from shared.config import get_settings

USAGE = "FLOWER_BASIC_AUTH must be set to user:password; Flower does not start without it."


def usable_basic_auth(value: str | None) -> bool:
    """True if every comma-separated entry is ``user:password`` with both non-empty."""
    if not value:
        return False
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not (colon and user.strip() and password):
            return False
    return True


def tornado_argv(argv: list[str]) -> list[str]:
    """Flower parses its options with tornado, which takes only ``--name=value``:
    ``--port 5555`` (the usual command-line form) becomes ``--port=5555``. A bare flag
    (``--debug``) stays as it is."""
    result: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith("--") and "=" not in arg and following is not None and not following.startswith("--"):
            result.append(f"{arg}={following}")
            index += 2
        else:
            result.append(arg)
            index += 1
    return result


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    if not usable_basic_auth(settings.flower_basic_auth):
        sys.exit(USAGE)
    # The credential goes through the environment, not argv, so `ps` does not show it.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    # The same interpreter's Celery (``python -m celery``), not whichever ``celery`` comes
    # first on PATH: ``python -m worker.flower`` must work without an activated venv.
    args = [sys.executable, "-m", "celery", "--app", "worker", "flower", *tornado_argv(argv if argv is not None else sys.argv[1:])]
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
