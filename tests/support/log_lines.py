"""A process's JSON log file as the tests read it."""

from __future__ import annotations

import json
from pathlib import Path


def json_lines(path: Path, *, skip: tuple[str, ...] = ()) -> list[dict]:
    """Every line of a log file parsed as a JSON object; a line that is not one fails the
    test (blank lines and lines starting with one of ``skip`` excepted)."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith(skip):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not a JSON line: {line!r}") from None
        assert isinstance(record, dict), f"{path.name}:{number} is not a JSON object: {line!r}"
        records.append(record)
    return records



