"""The statistics of outcomes written, counted in Python: one row per minute, queue,
task and outcome, whatever the batch's size.

Where outcomes are written by statements that return what they wrote, the tally is
made from those rows (a stale outcome, whose lease no longer held its job, is not
counted; a job asked to cancel counts as CANCELLED whatever its attempt did) and
written by :data:`~django_tasks.jobs.portable.COUNT` in the same transaction. On
PostgreSQL the worker's round trip counts inside its one statement instead
(``COUNTED`` in :mod:`django_tasks.jobs.postgresql`); this is SQLite's way and the
cancel verb's on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..histograms import BOUNDS, RUN_COLUMNS, WAIT_COLUMNS

__all__ = ["COLUMNS", "tally"]

#: The columns a tally row fills, in :data:`~django_tasks.jobs.portable.COUNT`'s order.
COLUMNS = ("minute", "backend", "queue_name", "task_path", "outcome", "n", "run_n", "run_us",
           *RUN_COLUMNS, "wait_n", "wait_us", *WAIT_COLUMNS)
_BOUNDS = tuple(b for b, _ in BOUNDS)


def _observe(row: dict[str, Any], seconds: float | None, prefix: str,
             columns: tuple[str, ...]) -> None:
    if seconds is None:
        return
    seconds = max(0.0, seconds)
    row[f"{prefix}_n"] += 1
    row[f"{prefix}_us"] += round(seconds * 1_000_000)
    for bound, column in zip(_BOUNDS, columns, strict=True):
        if seconds <= bound:
            row[column] += 1


def tally(minute: datetime, backend: str,
          written: Iterable[tuple[str, str, str, float | None, float | None]],
          ) -> list[dict[str, Any]]:
    """Rows for :data:`~django_tasks.jobs.portable.COUNT`: ``written`` is ``(queue, task,
    outcome status, seconds ran, seconds waited)`` per outcome written. Sorted by key,
    so concurrent writers lock rows in one order (no deadlock)."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for queue, task, status, ran, waited in written:
        row = rows.get((queue, task, status))
        if row is None:
            row = rows[(queue, task, status)] = dict.fromkeys(COLUMNS, 0)
            row.update(minute=minute, backend=backend, queue_name=queue, task_path=task,
                       outcome=status)
        row["n"] += 1
        _observe(row, ran, "run", RUN_COLUMNS)
        _observe(row, waited, "wait", WAIT_COLUMNS)
    return [rows[k] for k in sorted(rows)]
