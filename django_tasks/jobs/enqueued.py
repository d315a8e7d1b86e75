"""Jobs enqueued, counted where they are enqueued (web processes, beat, tasks that
enqueue) and added to the running totals (``django_tasks_total``, outcome ``ENQUEUED``):
the ``django_tasks_enqueued_total`` counter of ``/metrics`` (docs/observability.md).

Nothing is added to the enqueue's own statement (an enqueue stays one INSERT, and the
totals' hot rows are never locked inside a caller's transaction): a stored job is
counted in memory once its transaction commits (in the ``on_commit`` callback that
already sends ``task_enqueued``; a rolled-back enqueue is never counted), and a thread
of the enqueuing process adds the counts, one upsert per backend, queue and task, about
once a second while it enqueues. The thread opens its own connection and closes it and
ends after a second with nothing to add. A process killed with ``kill -9`` loses its
last second's counts; one that exits normally adds them at exit. A forked child (the
prefork pool) starts from none: its parent adds what it had counted.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from django.db import DatabaseError, connections, transaction

from .tally import COLUMNS, ENQUEUED

__all__ = ["COUNTER", "EnqueuedCounter"]

logger = logging.getLogger("django_tasks.worker")

Key = tuple[str, str, str, str]  # (database, backend, queue, task)


class EnqueuedCounter:
    """Counts of jobs stored, per database, backend, queue and task, until they are
    added to the running totals. Thread-safe; counting is one dict update."""

    #: Seconds between additions while counts keep coming.
    interval: float = 1.0
    #: Add from a thread of this process (False: only :meth:`flush` adds; the tests).
    background: bool = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._thread: threading.Thread | None = None

    def add(self, database: str, backend: str, queue: str, task: str, n: int = 1) -> None:
        """Count ``n`` jobs stored (call once their transaction committed)."""
        key = (database, backend, queue, task)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n
            if self._thread is None and self.background:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="django_tasks-enqueued")
                self._thread.start()

    def take(self) -> dict[Key, int]:
        """The counts so far, and start again from none."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def flush(self) -> int:
        """Add the counts so far to the running totals (one transaction per database);
        returns how many rows were added to. Counts that could not be written (the
        database is down) are kept for the next call."""
        counts = self.take()
        by_database: dict[str, list[dict[str, Any]]] = {}
        for (database, backend, queue, task), n in sorted(counts.items()):
            row = dict.fromkeys(COLUMNS, 0)
            row.update(backend=backend, queue_name=queue, task_path=task, outcome=ENQUEUED,
                       n=n)
            del row["minute"]
            by_database.setdefault(database, []).append(row)
        written = 0
        for database, rows in by_database.items():
            try:
                from django.tasks import task_backends

                engine = next(b.store.engine for b in task_backends.all()
                              if getattr(b, "database", None) == database
                              and hasattr(b, "store"))
                with transaction.atomic(using=database):
                    engine.add_totals(rows)
                written += len(rows)
            except (DatabaseError, StopIteration) as exc:
                logger.debug("Enqueued counts not added yet: %s", exc)
                with self._lock:
                    for row in rows:
                        key = (database, row["backend"], row["queue_name"], row["task_path"])
                        self._counts[key] = self._counts.get(key, 0) + row["n"]
        return written

    def _run(self) -> None:
        """Add the counts every ``interval`` seconds; end after one with none."""
        try:
            while True:
                time.sleep(self.interval)
                self.flush()
                with self._lock:
                    if not self._counts:
                        self._thread = None
                        return
        finally:
            connections.close_all()  # this thread's connections only

    def flush_at_exit(self) -> None:
        """:meth:`flush`, never raising (the interpreter is exiting)."""
        try:
            self.flush()
        except Exception as exc:  # settings or databases already gone
            logger.debug("Enqueued counts lost at exit: %s", exc)

    def _forget(self) -> None:
        """In a forked child: the parent's counts are the parent's to add."""
        self._lock = threading.Lock()
        self._counts = {}
        self._thread = None


#: The process's counter (``ModelBackend.enqueued`` counts into it).
COUNTER = EnqueuedCounter()
os.register_at_fork(after_in_child=COUNTER._forget)
atexit.register(COUNTER.flush_at_exit)
