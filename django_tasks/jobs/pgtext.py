"""What the job store sends PostgreSQL as text, made here rather than by psycopg's
adaptation (Python code that looks at every element): array literals (id lists, and
INSERT_MANY's columns: :func:`new_jobs`) and COPY's text format (COPY_MANY's lines:
:func:`copy_rows`). The statements are in :mod:`django_tasks.jobs.postgresql`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from ..serialization import dumps
from .messages import NewJob

__all__ = ["array", "copy_rows", "new_jobs", "texts", "times"]


def new_jobs(jobs: Sequence[NewJob]) -> dict[str, str]:
    """INSERT_MANY's arrays, one per column, as array literals made here: psycopg's own
    adaptation of lists is Python code that looked at every element with a regular
    expression, two thirds of a bulk enqueue's time in Python."""
    return {
        "id": array(j.id for j in jobs), "task_path": texts(j.task_path for j in jobs),
        "queue_name": texts(j.queue_name for j in jobs),
        "priority": array(str(j.priority) for j in jobs),
        "status": array(j.status for j in jobs), "call": texts(j.call for j in jobs),
        "max_attempts": array(str(j.max_attempts) for j in jobs),
        "enqueued_at": times(j.enqueued_at for j in jobs),
        "run_after": times(j.run_after for j in jobs),
        "workflow_id": array(j.workflow_id for j in jobs),
        "waiting_on": array(str(j.waiting_on) for j in jobs),
        "links": texts(None if j.links is None else dumps(j.links) for j in jobs),
        "unique_key": texts(j.unique_key for j in jobs),
        "expires_at": times(j.expires_at for j in jobs),
        "headers": texts(None if j.headers is None else dumps(j.headers) for j in jobs),
    }


def copy_rows(jobs: Sequence[NewJob], backend: str, now: datetime) -> str:
    """COPY_MANY's text for ``jobs`` (none unique): one line each, columns in
    INSERT_COLUMNS' order, the values INSERT_MANY would write (``available_at``:
    ``run_after``, else ``now``)."""
    escaped: dict[str, str] = {}
    due = now.isoformat()
    backend = _copy_text(backend)
    shared: Any = None  # the last headers dict and its text: a bulk enqueue shares one
    shared_text = _NULL
    lines = []
    for j in jobs:
        path = escaped.get(j.task_path)
        if path is None:
            path = escaped[j.task_path] = _copy_text(j.task_path)
        queue = escaped.get(j.queue_name)
        if queue is None:
            queue = escaped[j.queue_name] = _copy_text(j.queue_name)
        call, split = j.call, j.call_split
        args, kwargs = call[1:split], call[split + 1:-1]
        if "\\" in call:
            args, kwargs = args.replace("\\", "\\\\"), kwargs.replace("\\", "\\\\")
        if j.run_after is None:
            run, available = _NULL, due
        else:
            run = available = j.run_after.isoformat()
        if j.headers is not shared:
            shared = j.headers
            shared_text = _copy_json(shared)
        lines.append(
            f"{j.id}\t{path}\t{backend}\t{queue}\t{j.priority}\t{j.status}\t{args}\t"
            f"{kwargs}\t[]\t[]\t0\t{j.max_attempts}\t{j.enqueued_at.isoformat()}\t{run}\t"
            f"{available}\t\t\t{j.workflow_id or _NULL}\t{j.waiting_on}\t{_copy_json(j.links)}\t\t"
            f"{_NULL if j.expires_at is None else j.expires_at.isoformat()}\t{shared_text}\n")
    return "".join(lines)


#: NULL in COPY's text format.
_NULL = "\\N"


def _copy_json(value: Any) -> str:
    """``value`` (None: NULL) as JSON text in a field of COPY's text format: JSON
    escapes every character COPY's text format does but the backslash."""
    return _NULL if value is None else dumps(value).replace("\\", "\\\\")


def _copy_text(text: str) -> str:
    """``text`` as a field of COPY's text format."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def array(values: Iterable[str | None]) -> str:
    """An array literal of values that need no quoting (ids, numbers, status words),
    cast by the statement (``%(ids)s::uuid[]``): psycopg's own adaptation of a list
    inspects every element, a twentieth of the broker thread's time per round trip."""
    return "{" + ",".join("NULL" if v is None else v for v in values) + "}"


def _literal(values: Iterable[Any], render: Callable[[Any], str]) -> str:
    """An array literal of ``values`` (None is NULL), each rendered once: a bulk insert
    repeats most of its values (a task path, a time)."""
    seen: dict[Any, str] = {None: "NULL"}
    out = []
    for value in values:
        text = seen.get(value)
        if text is None:
            text = seen[value] = render(value)
        out.append(text)
    return "{" + ",".join(out) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def texts(values: Iterable[str | None]) -> str:
    """An array literal of any text (each quoted)."""
    return _literal(values, _quoted)


def times(values: Iterable[datetime | None]) -> str:
    """An array literal of aware datetimes (ISO text needs no quoting)."""
    return _literal(values, datetime.isoformat)
