"""The operator commands as the tests run them (``OperatorCliRunner``: ``flask --app
ingest_api <command>`` in-process) and read their output: the created id on the last line,
``assert_refused`` for a command that refuses, and the arguments of ``prices set``."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from flask.cli import FlaskGroup
from flask.testing import FlaskCliRunner


class OperatorCliRunner(FlaskCliRunner):
    """Runs ``flask --app ingest_api <command>`` in-process: the operator commands come
    from the ``flask.commands`` entry points, as the ``flask`` command loads them."""

    def invoke(self, cli=None, args=None, **kwargs):
        return super().invoke(cli or FlaskGroup(create_app=lambda: self.app), args, **kwargs)



def assert_refused(result, *fragments: str, exit_code: int | None = None) -> None:
    """The command exited with ``exit_code`` (1: refused; 2: a usage error; None: either),
    wrote one ``Error:`` line naming the problem (with each of ``fragments``) on stderr,
    and no traceback."""
    if exit_code is None:
        assert result.exit_code in (1, 2), result.output
    else:
        assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]



def last_line(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[-1]


def created_id(result) -> uuid.UUID:
    return uuid.UUID(last_line(result))


def count(session, model) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model))


RATES = {
    "--input-per-token": "0.00000015",
    "--output-per-token": "0.0000006",
    "--agent700-input-per-token": "0.000000300000000001",
    "--agent700-output-per-token": "0.0000012",
}


def price_args(model: str = "gpt-4o-mini", **overrides: str) -> list[str]:
    rates = {**RATES, **{f"--{name.replace('_', '-')}": value for name, value in overrides.items()}}
    return ["prices", "set", "--model", model, *[part for option in rates.items() for part in option]]



