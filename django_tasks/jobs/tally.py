"""The statistics of outcomes written, counted in Python: one row per minute, queue,
task and outcome status, whatever the number of outcomes.

A worker keeps a :class:`Tally` of the outcomes its round trips wrote (``Exchanged.applied``:
an outcome whose lease no longer held its job is not counted; a job asked to cancel
counts as CANCELLED, as written) and adds it to the table about once a second
(:meth:`django_tasks.jobs.store.JobStore.add_statistics`), off the round trip. Writes of
outcomes outside a round trip (cancelling, rescue, give-back) count in their own
transaction (:meth:`django_tasks.jobs.engine.Engine.count`). Either way one
:data:`~django_tasks.jobs.portable.COUNT` upsert per row.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..histograms import BOUNDS, RUN_COLUMNS, WAIT_COLUMNS

__all__ = ["COLUMNS", "ENQUEUED", "RESCUED", "Tally", "Written", "tally", "written_of"]

#: The counts the running totals keep beside the outcomes (``django_tasks.models.Total``):
#: jobs stored (after their transaction commits) and started attempts rescued.
ENQUEUED, RESCUED = "ENQUEUED", "RESCUED"

#: The columns a tally row fills, in :data:`~django_tasks.jobs.portable.COUNT`'s order.
COLUMNS = ("minute", "backend", "queue_name", "task_path", "outcome", "n", "run_n", "run_us",
           *RUN_COLUMNS, "wait_n", "wait_us", *WAIT_COLUMNS)
_BOUNDS = tuple(b for b, _ in BOUNDS)
_B = len(_BOUNDS)
# A key's counters: n, then for run and wait: observations, microseconds, and one count
# per bucket (not cumulative: an observation adds to one; made cumulative when read).
_RUN, _WAIT = 1, 3 + _B
_SIZE = 1 + 2 * (2 + _B + 1)

#: ``(queue, task, outcome status, seconds ran or None, seconds waited or None)``.
Written = tuple[str, str, str, float | None, float | None]
Key = tuple[datetime, str, str, str]


class Tally:
    """Counts of outcomes written, per (minute, queue, task, status), until they are
    written to the statistics table. Thread-safe; adding costs a few dict and bisect
    operations per outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def add(self, minute: datetime, written: Iterable[Written]) -> None:
        """Count ``written`` in ``minute`` (its seconds are dropped)."""
        minute = minute.replace(second=0, microsecond=0)
        with self._lock:
            counts = self._counts
            for queue, task, status, ran, waited in written:
                key = (minute, queue, task, status)
                c = counts.get(key)
                if c is None:
                    c = counts[key] = [0] * _SIZE
                c[0] += 1
                for offset, seconds in ((_RUN, ran), (_WAIT, waited)):
                    if seconds is not None:
                        seconds = max(0.0, seconds)
                        c[offset] += 1
                        c[offset + 1] += round(seconds * 1_000_000)
                        c[offset + 2 + bisect_left(_BOUNDS, seconds)] += 1

    def take(self) -> dict[Key, list[int]]:
        """The counts so far, and start again from none."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def put_back(self, counts: dict[Key, list[int]]) -> None:
        """Add ``counts`` (taken, not written) back."""
        with self._lock:
            for key, values in counts.items():
                mine = self._counts.setdefault(key, [0] * _SIZE)
                for i, v in enumerate(values):
                    mine[i] += v


def rows(counts: dict[Key, list[int]], backend: str) -> list[dict[str, Any]]:
    """:data:`~django_tasks.jobs.portable.COUNT`'s parameters for ``counts``, sorted by
    key so concurrent writers lock rows in one order (no deadlock)."""
    out = []
    for key in sorted(counts):
        minute, queue, task, status = key
        c = counts[key]
        row: dict[str, Any] = {"minute": minute, "backend": backend, "queue_name": queue,
                               "task_path": task, "outcome": status, "n": c[0]}
        for offset, prefix, columns in ((_RUN, "run", RUN_COLUMNS), (_WAIT, "wait", WAIT_COLUMNS)):
            row[f"{prefix}_n"], row[f"{prefix}_us"] = c[offset], c[offset + 1]
            total = 0
            for i, column in enumerate(columns):
                total += c[offset + 2 + i]
                row[column] = total
        out.append(row)
    return out


def tally(minute: datetime, backend: str, written: Iterable[Written]) -> list[dict[str, Any]]:
    """The rows of ``written`` in ``minute`` (one per queue, task and status)."""
    counts = Tally()
    counts.add(minute, written)
    return rows(counts.take(), backend)


def written_of(applied: Sequence[Any], outcomes: Sequence[Any]) -> list[Written]:
    """What :class:`Tally` counts of outcome rows written (``Applied``, decoded) and the
    ``Outcome`` objects they were written from (their durations)."""
    by_id = {o.id: o for o in outcomes}
    out = []
    for a in applied:
        o = by_id.get(a.id)
        out.append((a.queue_name, a.task_path, a.status, o.ran if o else None,
                    o.waited if o else None))
    return out
