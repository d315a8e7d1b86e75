"""The numbers operators watch, read one way for everyone: the admin dashboard
(:mod:`django_tasks.admin.stats`), ``manage.py tasks status`` and ``/metrics``
(:mod:`.prometheus`) all call these functions, so they never disagree.

Never a scan of the job table: counts of READY jobs are capped (``COUNT_CAP``) and made
per priority, so each is a bounded range of the claim index ``django_tasks_job_claim_q``
(``backend, queue_name, -priority, available_at``); the priorities themselves are found
by a loose index scan (one probe per distinct priority). Held jobs come from the small
``django_tasks_job_held`` index, waiting workflow steps from ``django_tasks_job_waiting``,
workers from the worker table (its live rows). Everything about the past comes from the
statistics: per minute (:class:`~django_tasks.models.Statistic`, the dashboard's charts and
last hour) and since the start (:class:`~django_tasks.models.Total`, the counters).
``benchmarks/admin_pages.py`` times the dashboard at 1,000,000 ready and 1,000,000
finished jobs; ``/metrics`` makes the same reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.tasks import task_backends

from ..models import Job, Statistic, Total, Worker
from ..states import CANCELLED, CLAIMED, FAILED, READY, RUNNING, SUCCESSFUL, WAITING

__all__ = ["COUNT_CAP", "Backlog", "Capped", "WorkerCounts", "backlog", "backlogs", "capped",
           "held", "hour_counts", "our_backends", "priorities", "totals", "worker_counts"]

FINISHED = (SUCCESSFUL, FAILED, CANCELLED)

#: Counts of jobs in the job table stop here ("10,000+").
COUNT_CAP = 10_000
#: At most this many distinct priorities are probed per queue.
PRIORITIES_PROBED = 20
#: Held jobs (claimed or running) read at most: workers' slots and prefetch, in practice.
HELD_READ = 2_000
#: Rows of each list shown.
LISTED = 10


@dataclass(frozen=True)
class Capped:
    """A count that stops at ``COUNT_CAP`` (``more``: there are more than ``n``)."""

    n: int = 0
    more: bool = False

    def __add__(self, other: Capped) -> Capped:
        return Capped(self.n + other.n, self.more or other.more)

    def __str__(self) -> str:
        return f"{self.n:,}+" if self.more else f"{self.n:,}"


@dataclass
class Backlog:
    """One queue of one backend, now."""

    backend: str
    queue: str
    ready: Capped = field(default_factory=Capped)
    scheduled: Capped = field(default_factory=Capped)
    claimed: int = 0
    running: int = 0
    waiting: Capped = field(default_factory=Capped)
    failed_hour: int = 0
    finished_hour: int = 0
    per_minute: float = 0.0
    oldest_ready: datetime | None = None
    #: READY jobs due for longer than the dashboard's threshold, oldest first.
    late: list[dict[str, Any]] = field(default_factory=list)

    def oldest_age(self, now: datetime) -> timedelta | None:
        return None if self.oldest_ready is None else max(timedelta(0), now - self.oldest_ready)


def our_backends() -> list[Any]:
    """The configured backends whose jobs live in our tables (they have a job store)."""
    found = []
    for alias in task_backends:
        try:
            backend = task_backends[alias]
        except Exception:  # a misconfigured backend: manage.py check reports it
            continue
        if hasattr(backend, "store"):
            found.append(backend)
    return found


def capped(queryset: QuerySet[Any]) -> Capped:
    """``SELECT COUNT(*) FROM (... LIMIT COUNT_CAP + 1)``: reads at most that many rows."""
    n = queryset.order_by()[:COUNT_CAP + 1].count()
    return Capped(min(n, COUNT_CAP), n > COUNT_CAP)


def priorities(ready: QuerySet[Job]) -> list[int]:
    """The distinct priorities of ``ready`` jobs (one queue), highest first: a loose
    scan of the claim index, one ``ORDER BY priority DESC LIMIT 1`` probe each."""
    found: list[int] = []
    values = ready.order_by("-priority").values_list("priority", flat=True)
    while len(found) < PRIORITIES_PROBED:
        p = (values.filter(priority__lt=found[-1]) if found else values).first()
        if p is None:
            break
        found.append(p)
    return found


def backlog(backend: Any, queue: str, now: datetime, late_after: timedelta) -> Backlog:
    """READY (due now, and scheduled later), WAITING and late jobs of one queue."""
    jobs = Job.objects.using(backend.database)
    ready = jobs.filter(status=READY, backend=backend.alias, queue_name=queue)
    row = Backlog(backend.alias, queue)
    late: list[dict[str, Any]] = []
    for p in priorities(ready):
        same = ready.filter(priority=p)
        row.ready += capped(same.filter(available_at__lte=now))
        row.scheduled += capped(same.filter(available_at__gt=now))
        oldest = same.order_by("available_at").values_list("available_at", flat=True).first()
        if oldest is not None and oldest <= now and (row.oldest_ready is None
                                                     or oldest < row.oldest_ready):
            row.oldest_ready = oldest
        late.extend(same.filter(available_at__lt=now - late_after).order_by("available_at")
                    .values("id", "task_path", "available_at", "priority")[:LISTED])
    row.late = sorted(late, key=lambda j: j["available_at"])[:LISTED]
    row.waiting = capped(jobs.filter(status=WAITING, backend=backend.alias, queue_name=queue))
    return row


def held(databases: set[str]) -> list[dict[str, Any]]:
    """Jobs workers hold (claimed or running), from the held-jobs index."""
    rows: list[dict[str, Any]] = []
    for database in sorted(databases):
        rows.extend(Job.objects.using(database).held().values(
            "id", "backend", "queue_name", "task_path", "status", "worker_id",
            "last_attempted_at")[:HELD_READ])
    return rows


def hour_counts(databases: set[str], now: datetime, last_minutes: int,
                ) -> dict[tuple[str, str], dict[str, int]]:
    """Per (backend, queue), from the statistics of the last hour: jobs finished per
    outcome, and under ``"last"`` those of the ``last_minutes`` latest minutes."""
    database = min(databases) if databases else "default"
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=last_minutes - 1)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for b, q, outcome, last, total in (
        Statistic.objects.using(database)
        .filter(minute__gte=now - timedelta(hours=1), outcome__in=FINISHED)
        .values("backend", "queue_name", "outcome")
        .annotate(last=Sum("n", filter=Q(minute__gte=since)), total=Sum("n"))
        .values_list("backend", "queue_name", "outcome", "last", "total")
    ):
        row = counts[(b, q)]
        row[outcome] = total or 0
        row["last"] = row.get("last", 0) + (last or 0)
    return counts


def backlogs(backends: Sequence[Any], now: datetime, *,
             late_after: timedelta = timedelta(minutes=10),
             also: Iterable[tuple[str, str]] = ()) -> tuple[list[Backlog], list[dict[str, Any]]]:
    """A :class:`Backlog` for every configured queue of ``backends`` (and the
    ``(alias, queue)`` pairs of ``also`` among them), with the jobs held in it; and the
    held jobs read (:func:`held`)."""
    by_alias = {b.alias: b for b in backends}
    known = {(b.alias, q) for b in backends for q in (b.queues or ["default"])}
    known.update(k for k in also if k[0] in by_alias)
    rows = [backlog(by_alias[alias], q, now, late_after) for alias, q in sorted(known)]
    holding = held({b.database for b in backends})
    for row in rows:
        mine = [j for j in holding if (j["backend"], j["queue_name"]) == (row.backend, row.queue)]
        row.running = sum(j["status"] == RUNNING for j in mine)
        row.claimed = sum(j["status"] == CLAIMED for j in mine)
    return rows, holding


@dataclass
class WorkerCounts:
    """One backend's workers, now: those alive (heartbeat within ``WORKER_TIMEOUT``),
    not stopped but silent past it (``dead``), their slots and how many run a job, and
    the broker outages the live ones have ridden out (``outages``) or are in."""

    backend: str
    alive: int = 0
    dead: int = 0
    slots: int = 0
    busy: int = 0
    outages: int = 0
    in_outage: int = 0


def worker_counts(backends: Sequence[Any], now: datetime,
                  holding: Sequence[dict[str, Any]]) -> list[WorkerCounts]:
    """:class:`WorkerCounts` per backend, from the worker rows not stopped and the held
    jobs (``busy``: RUNNING jobs)."""
    out = []
    for b in backends:
        counts = WorkerCounts(b.alias)
        timeout = b.config.worker_timeout
        for w in Worker.objects.using(b.database).filter(backend=b.alias,
                                                         stopped_at__isnull=True):
            if w.state(now, timeout) != "alive":
                counts.dead += 1
                continue
            counts.alive += 1
            counts.slots += w.concurrency
            counts.outages += w.outages
            counts.in_outage += w.in_outage
        counts.busy = sum(j["backend"] == b.alias and j["status"] == RUNNING for j in holding)
        out.append(counts)
    return out


def totals(backends: Sequence[Any]) -> list[dict[str, Any]]:
    """The running totals of ``backends`` (:class:`~django_tasks.models.Total` rows as
    dicts): one row per backend, queue, task and outcome, never going down."""
    rows: list[dict[str, Any]] = []
    by_database: dict[str, list[str]] = defaultdict(list)
    for b in backends:
        by_database[b.database].append(b.alias)
    for database, aliases in sorted(by_database.items()):
        rows.extend(Total.objects.using(database).filter(backend__in=aliases)
                    .order_by("backend", "queue_name", "task_path", "outcome").values())
    return rows
