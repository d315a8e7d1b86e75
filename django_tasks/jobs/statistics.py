"""The statistics table's upkeep: a worker's tally added, old minutes rolled up into
hours, and the oldest pruned (:class:`~django_tasks.jobs.store.JobStore`'s verbs, a
part of it as :class:`~django_tasks.jobs.cancel.Cancelling` is).

A row's ``minute`` is the start of the period it counts: a minute while it is recent,
an hour once :meth:`Statistics.roll_up_statistics` has merged the hour's minutes (which
a worker's prune duty does for minutes older than ``ROLL_UP_AFTER``). The dashboard's
charts of the last hour and day read minutes; its 7-day chart, hours. A busy system
keeps one row per queue, task and outcome per minute for a day, then per hour: 60 times
fewer rows for the 7-day chart and its percentiles to add up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from .tally import COLUMNS, Tally
from .tally import rows as tally_rows

__all__ = ["ROLL_UP_AFTER", "Statistics"]

#: Minutes older than this are rolled up into hours (the 24-hour chart reads minutes
#: as far back as 24 h 15 min).
ROLL_UP_AFTER = timedelta(hours=26)
#: Hours rolled up per call at most (one transaction each).
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

    def roll_up_statistics(self, before: datetime) -> int:
        """Merge the minutes before ``before`` into one row per hour, queue, task and
        outcome (at the hour's start); returns how many hours were rolled up.

        Each hour in a transaction of its own: its rows are deleted and returned, and
        their sums written back. Safe to run concurrently (a second roll-up of an hour
        finds the first one's single row and writes it back as it is) and again (an
        hour rolled up has nothing left off the hour)."""
        from django.db.models.functions import ExtractMinute

        from ..models import Statistic

        minutes = (Statistic.objects.using(self.database)
                   .filter(backend=self.backend_alias, minute__lt=before)
                   .annotate(m=ExtractMinute("minute", tzinfo=UTC)).exclude(m=0)
                   .order_by("minute").values_list("minute", flat=True))
        done = 0
        start = None
        while done < ROLL_UP_BATCH:
            later = minutes.filter(minute__gte=start + timedelta(hours=1)) if start else minutes
            first = later.first()
            if first is None:
                break
            start = first.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            end = min(start + timedelta(hours=1), before)
            with transaction.atomic(using=self.database):
                rows = self.engine.take_period(start, end)
                self.engine.add_counts(_summed(rows, start))
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
