"""The statistics table's upkeep: a worker's tally added, old minutes rolled up into
hours, and the oldest pruned (:class:`~django_tasks.jobs.store.JobStore`'s verbs, a
part of it as :class:`~django_tasks.jobs.cancel.Cancelling` is).

A row's ``minute`` is the start of the period it counts: a minute while it is recent,
then a quarter of an hour, then an hour, once :meth:`Statistics.roll_up_statistics` has
merged the periods' rows (which a worker's prune duty does for what is older than
``ROLL_UP``'s ages). The dashboard's chart of the last hour reads minutes, of the last
day quarters, of the last 7 days hours: each adds up at most a few hundred periods'
rows per queue, task and outcome, however busy the system.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from .tally import COLUMNS, Tally
from .tally import rows as tally_rows

__all__ = ["ROLL_UP", "Statistics"]

#: (age, period): rows older than ``age`` are rolled up into periods this long. The
#: 1-hour chart reads minutes; the 24-hour chart quarters (as far back as 24 h 15 min).
ROLL_UP = ((timedelta(hours=2), timedelta(minutes=15)),
           (timedelta(hours=26), timedelta(hours=1)))
#: Periods rolled up per call at most (one transaction each).
ROLL_UP_BATCH = 24 * 15
_KEY = ("minute", "backend", "queue_name", "task_path", "outcome")


class Statistics:
    """The statistics verbs of :class:`~django_tasks.jobs.store.JobStore`."""

    # What JobStore provides; declared for readers and type checkers.
    database: str
    backend_alias: str
    engine: Any

    def add_statistics(self, counts: Tally) -> int:
        """Write what ``counts`` holds to the statistics table (one transaction; it is
        emptied), adding to the rows of its minutes; returns how many rows. If the
        write fails, the counts are put back for the next call and the error propagates."""
        taken = counts.take()
        if not taken:
            return 0
        try:
            with transaction.atomic(using=self.database):
                self.engine.add_counts(tally_rows(taken, self.backend_alias))
        except BaseException:
            counts.put_back(taken)
            raise
        return len(taken)

    def prune_statistics(self, before: datetime) -> int:
        """Delete this backend's statistics of the periods that started before ``before``."""
        from ..models import Statistic

        return (Statistic.objects.using(self.database).filter(backend=self.backend_alias)
                .prune(before))

    def roll_up_statistics(self, before: datetime,
                           period: timedelta = timedelta(hours=1)) -> int:
        """Merge the rows of periods shorter than ``period`` (15 or 60 minutes) before
        ``before`` into one row per ``period``, queue, task and outcome (at the period's
        start); returns how many periods were rolled up.

        Each period in a transaction of its own: its rows are deleted and returned, and
        their sums written back. Safe to run concurrently (a second roll-up of a period
        finds the first one's rows and writes them back as they are) and again (a
        period rolled up has nothing left off its start)."""
        from django.db.models.functions import ExtractMinute, Mod

        from ..models import Statistic

        length = int(period.total_seconds() // 60)
        if length not in (15, 60):
            raise ValueError(f"period must be 15 or 60 minutes; got {period}.")
        minutes = (Statistic.objects.using(self.database)
                   .filter(backend=self.backend_alias, minute__lt=before)
                   .annotate(off=Mod(ExtractMinute("minute", tzinfo=UTC), length))
                   .exclude(off=0).order_by("minute").values_list("minute", flat=True))
        done = 0
        start = None
        while done < ROLL_UP_BATCH:
            later = minutes.filter(minute__gte=start + period) if start else minutes
            first = later.first()
            if first is None:
                break
            first = first.astimezone(UTC)
            start = first.replace(minute=first.minute - first.minute % length, second=0,
                                  microsecond=0)
            with transaction.atomic(using=self.database):
                rows = self.engine.take_period(start, min(start + period, before))
                self.engine.add_counts(_summed(rows, start), totals=False)
            done += 1
        return done


def _summed(rows: list[dict[str, Any]], start: datetime) -> list[dict[str, Any]]:
    """One row per queue, task and outcome: the sums of ``rows``, at ``start``."""
    sums: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["backend"], row["queue_name"], row["task_path"], row["outcome"])
        total = sums.get(key)
        if total is None:
            sums[key] = {**row, "minute": start}
            continue
        for column in COLUMNS:
            if column not in _KEY:
                total[column] += row[column]
    return [sums[k] for k in sorted(sums)]
