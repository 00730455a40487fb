"""Beat, Celery's clock: the periodic tasks declare their schedule where they are defined
(``@beat.every`` above the task), the app collects them once its tasks are registered
(``schedule``), and beat's scheduler keeps its state file under the var directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import celery.beat


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str  # the entry's name in beat's schedule (and its state file)
    task: object  # the task (a Celery proxy until the app is finalized)
    seconds: float
    options: dict


_entries: list[_Entry] = []


def every(seconds: float, *, entry: str, **options):
    """Declare, above a task's ``@shared_task``, that beat sends it every ``seconds``;
    ``options`` are the message's (e.g. ``expires``)."""

    def declare(task):
        _entries.append(_Entry(entry, task, seconds, options))
        return task

    return declare


def schedule() -> dict[str, dict]:
    """Celery's ``beat_schedule`` of every declared entry; read once the app is finalized
    (a task's name is known only then)."""
    return {
        entry.name: {"task": entry.task.name, "schedule": entry.seconds, "options": dict(entry.options)}
        for entry in _entries
    }


class BeatScheduler(celery.beat.PersistentScheduler):
    """Celery's own scheduler (a shelve file), which first makes its file's directory:
    by default the var directory (celeryconfig), which the first beat of an installed
    service may not find."""

    def setup_schedule(self):
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
