"""How the commands print what they list: tables for people, one JSON document for
scripts (``--json``), times in UTC with a ``Z``. One home, so every listing reads alike."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from decimal import Decimal
from typing import Any

import click

json_option: Callable = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of tables (for scripts)."
)


def time_text(value: dt.datetime | None, empty: str = "") -> str:
    return empty if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def decimal_text(value: Decimal) -> str:
    """A rate as people read it: no trailing zeros, never an exponent (1.5E-7)."""
    return format(value.normalize(), "f")


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Collection[int] = ()) -> None:
    """Columns padded to their widest cell; ``right`` holds the indexes of number columns.

    The last column, when left-aligned, is not padded: it is free text of any length.
    """
    rows = [list(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    last = len(headers) - 1
    for line in [list(headers), *rows]:
        cells = [
            cell.rjust(width) if index in right else cell if index == last else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


def print_fields(title: str, fields: Sequence[tuple[str, str]]) -> None:
    """A record as ``label: value`` lines under a title (what ``show`` commands print first)."""
    click.echo(title)
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        click.echo(f"  {(label + ':').ljust(width)} {value}")
