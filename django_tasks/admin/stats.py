"""What the dashboard reads, each look-up served by an index or the statistics table.

Queue depths, held jobs and the last hour's counts are read by
:mod:`django_tasks.observe.numbers`, the query layer ``manage.py tasks status`` and
``/metrics`` read too (never a scan of the job table; see there). Recent failures come
from ``django_tasks_job_failed``. Everything about the past (finished
and failed per minute, throughput, percentiles) comes from the per-minute statistics
(:class:`~django_tasks.models.Statistic`). ``benchmarks/admin_pages.py`` times it at
1,000,000 ready and 1,000,000 finished jobs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncHour
from django.tasks import task_backends

from ..conf import BackendOptions
from ..histograms import RUN_COLUMNS, WAIT_COLUMNS, bucket_values, percentile
from ..jobs.policy import task_or_none
from ..models import Job, Schedule, Statistic, Worker
from ..observe import numbers
from ..observe.numbers import (
    COUNT_CAP,
    FINISHED,
    LISTED,
    Backlog,
    Capped,
    hour_counts,
    our_backends,
)
from ..states import CLAIMED, FAILED, READY, RUNNING

__all__ = ["COUNT_CAP", "RANGES", "Backlog", "Capped", "Snapshot", "read"]

#: Throughput is jobs finished per minute over this many latest minutes.
THROUGHPUT_MINUTES = 5
#: The charts' ranges: key -> (label, span, bucket width, the bucket's name).
RANGES = {
    "1h": ("last hour", timedelta(hours=1), timedelta(minutes=1), "minute"),
    "24h": ("last 24 hours", timedelta(hours=24), timedelta(minutes=15), "15 minutes"),
    "7d": ("last 7 days", timedelta(days=7), timedelta(hours=1), "hour"),
}


@dataclass
class Snapshot:
    """Everything the dashboard shows, read at ``now``."""

    now: datetime
    backlogs: list[Backlog]
    chart: list[tuple[datetime, int, int]]  # (bucket start, finished other than FAILED, FAILED)
    bucket: timedelta
    tasks: list[dict[str, Any]]
    stuck: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    schedules: list[Schedule]


def statistics(databases: set[str], since: datetime, **filters: Any) -> QuerySet[Statistic]:
    """The statistics rows since ``since``. With backends on several databases, those of
    the first database (by alias) only: charts across databases are not summed."""
    database = min(databases) if databases else "default"
    return Statistic.objects.using(database).filter(minute__gte=since, **filters)


def chart(stats: QuerySet[Statistic], start: datetime, now: datetime,
          bucket: timedelta) -> list[tuple[datetime, int, int]]:
    """Jobs finished per bucket since ``start``: (bucket start, not failed, failed)."""
    minutes = stats.filter(outcome__in=FINISHED)
    if bucket >= timedelta(hours=1):
        rows = (minutes.annotate(at=TruncHour("minute", tzinfo=UTC)).values("at", "outcome")
                .annotate(total=Sum("n")).values_list("at", "outcome", "total"))
    else:
        rows = (minutes.values("minute", "outcome").annotate(total=Sum("n"))
                .values_list("minute", "outcome", "total"))
    width = bucket.total_seconds()
    count = int((now - start).total_seconds() // width) + 1
    ok, failed = [0] * count, [0] * count
    for at, outcome, total in rows:
        i = int((at - start).total_seconds() // width)
        if 0 <= i < count:
            (failed if outcome == FAILED else ok)[i] += total or 0
    return [(start + i * bucket, ok[i], failed[i]) for i in range(count)]


def per_task(stats: QuerySet[Statistic], limit: int = 30) -> list[dict[str, Any]]:
    """Per task, over the chart's range: counts and p50/p95/p99 of time in queue and
    run time, from the summed histograms (busiest tasks first)."""
    sums = {c: Sum(c) for c in ("run_n", "run_us", "wait_n", "wait_us", *RUN_COLUMNS,
                                *WAIT_COLUMNS)}
    rows = (stats.values("task_path")
            .annotate(total=Sum("n"), failed=Sum("n", filter=Q(outcome=FAILED)),
                      retried=Sum("n", filter=Q(outcome=READY)), **sums)
            .order_by("-total", "task_path")[:limit])
    out = []
    for row in rows:
        runs = bucket_values(row, RUN_COLUMNS)
        waits = bucket_values(row, WAIT_COLUMNS)
        out.append({
            "task_path": row["task_path"], "total": row["total"] or 0,
            "failed": row["failed"] or 0, "retried": row["retried"] or 0,
            "run": [percentile(q, row["run_n"] or 0, runs) for q in (0.5, 0.95, 0.99)],
            "wait": [percentile(q, row["wait_n"] or 0, waits) for q in (0.5, 0.95, 0.99)],
            "run_mean": (row["run_us"] or 0) / row["run_n"] / 1e6 if row["run_n"] else None,
        })
    return out


def recent_failures(databases: set[str]) -> list[dict[str, Any]]:
    """The latest FAILED jobs (the failed-jobs index, newest first) with their error line."""
    rows: list[dict[str, Any]] = []
    for database in sorted(databases):
        rows.extend(Job.objects.using(database).filter(status=FAILED).order_by("-enqueued_at")
                    .values("id", "backend", "queue_name", "task_path", "finished_at",
                            "attempts", "errors")[:LISTED])
    rows.sort(key=lambda r: r["finished_at"] or r["id"], reverse=True)
    for row in rows:
        errors = row.pop("errors") or []
        last = errors[-1] if errors and isinstance(errors[-1], dict) else {}
        cls = str(last.get("exception_class_path", "")).rsplit(".", 1)[-1]
        message = str(last.get("message", "")).strip().splitlines()
        row["error"] = f"{cls}: {message[0] if message else ''}".strip(": ")
    return rows[:LISTED]


def _stuck(holding: list[dict[str, Any]], workers: dict[str, Any], now: datetime,
           backlogs: list[Backlog], late_after: timedelta) -> list[dict[str, Any]]:
    """Jobs running on a dead worker, running past their time limit, READY too long."""
    stuck = []
    for job in holding:
        worker = workers.get(job["worker_id"])
        if worker is None or worker["state"] != "alive":
            state = "unknown" if worker is None else worker["state"]
            stuck.append({**job, "why": f"held by a {state} worker", "since": None})
            continue
        if job["status"] != RUNNING or job["last_attempted_at"] is None:
            continue
        limit = getattr(task_or_none(job["task_path"]), "time_limit", None)
        ran = now - job["last_attempted_at"]
        if limit and ran.total_seconds() > limit:
            stuck.append({**job, "why": f"running for {ran.total_seconds():.0f} s, past its "
                                        f"time limit of {limit:g} s",
                          "since": job["last_attempted_at"]})
    for row in backlogs:
        for job in row.late:
            stuck.append({**job, "backend": row.backend, "queue_name": row.queue,
                          "status": READY, "worker_id": "",
                          "why": f"ready for over {_minutes(late_after)}",
                          "since": job["available_at"]})
    return stuck[:3 * LISTED]


def _minutes(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes:g} min" if minutes < 120 else f"{minutes / 60:g} h"


def _workers(databases: set[str], now: datetime, holding: list[dict[str, Any]],
             ) -> dict[str, dict[str, Any]]:
    jobs_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in holding:
        jobs_of[job["worker_id"]].append(job)
    out: dict[str, dict[str, Any]] = {}
    for database in sorted(databases):
        recent = Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - timedelta(hours=1))
        for w in Worker.objects.using(database).filter(recent | Q(id__in=list(jobs_of)))\
                .order_by("-started_at")[:100]:
            try:
                timeout = task_backends[w.backend].config.worker_timeout
            except Exception:  # a backend this deploy no longer has
                timeout = BackendOptions.worker_timeout
            out[w.id] = {
                "worker": w, "state": w.state(now, timeout),
                "heartbeat_age": now - w.last_heartbeat_at,
                "jobs": [j for j in jobs_of.get(w.id, []) if j["status"] == RUNNING],
                "claimed": sum(j["status"] == CLAIMED for j in jobs_of.get(w.id, [])),
            }
    return out


def read(now: datetime, *, span: str = "1h", queue: str = "", task: str = "",
         late_after: timedelta = timedelta(minutes=10)) -> Snapshot:
    """The dashboard's data at ``now``; the chart and per-task table over ``span`` (a
    RANGES key), for one queue (``backend:queue``) and one task if given."""
    backends = our_backends()
    databases = {b.database for b in backends}
    _, length, bucket, _ = RANGES.get(span, RANGES["1h"])
    recent = hour_counts(databases, now, THROUGHPUT_MINUTES)
    backlogs, holding = numbers.backlogs(backends, now, late_after=late_after, also=recent)
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=THROUGHPUT_MINUTES - 1)
    elapsed = max(1.0, (now - since).total_seconds() / 60)
    for row in backlogs:
        counts = recent.get((row.backend, row.queue), {})
        row.failed_hour = counts.get(FAILED, 0)
        row.finished_hour = sum(counts.get(o, 0) for o in FINISHED)
        row.per_minute = counts.get("last", 0) / elapsed
    filters: dict[str, Any] = {}
    if ":" in queue:
        filters["backend"], filters["queue_name"] = queue.split(":", 1)
    if task:
        filters["task_path"] = task
    start = _floor(now - length + bucket, bucket)
    ranged = statistics(databases, start, **filters)
    workers = _workers(databases, now, holding)
    schedules: list[Schedule] = []
    for database in sorted(databases):
        schedules.extend(Schedule.objects.using(database).active()
                         .order_by("next_run_at")[:3 * LISTED])
    return Snapshot(
        now=now, backlogs=backlogs, chart=chart(ranged, start, now, bucket), bucket=bucket,
        tasks=per_task(ranged), stuck=_stuck(holding, workers, now, backlogs, late_after),
        failures=recent_failures(databases), workers=list(workers.values()),
        schedules=schedules,
    )


def _floor(when: datetime, bucket: timedelta) -> datetime:
    """``when`` rounded down to a multiple of ``bucket`` (from the hour, or the day)."""
    seconds = bucket.total_seconds()
    base = when.replace(minute=0, second=0, microsecond=0)
    if seconds >= 3600:
        return base
    into = (when - base).total_seconds()
    return base + timedelta(seconds=into // seconds * seconds)
