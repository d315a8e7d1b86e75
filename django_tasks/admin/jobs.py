"""The job list and job page: fast at millions of rows, retry and cancel with permission."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.utils import get_last_value_from_parameters
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Min, Q, QuerySet
from django.http import HttpRequest
from django.tasks import task_backends
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..jobs import summary
from ..jobs.summary import task_paths
from ..models import Job, JobQuerySet, Schedule, ScheduleTick, Worker
from .actions import JobActionsMixin
from .common import ReadOnlyMixin, seconds, worker_link
from .page import JobPageMixin

#: The job list counts matching jobs up to this many; past it the count is PostgreSQL's
#: estimate ("about N"; "more than N" on SQLite), so a listing never reads every
#: matching row (JobPaginator).
COUNT_CAP = 10_000
#: The worker filter offers the workers most recently started, this many.
WORKERS_SHOWN = 50


def request_task_paths(request: HttpRequest, using: str) -> list[str]:
    """``task_paths(using)``, once per request (the task filter and search both use it)."""
    cache = request.__dict__.setdefault("_django_tasks_task_paths", {})
    if using not in cache:
        cache[using] = task_paths(using)
    return cache[using]


def _estimated_rows(queryset: QuerySet[Job]) -> int | None:
    """The database's estimate of how many rows ``queryset`` matches, from the plan of
    its query (``EXPLAIN (FORMAT JSON)``; for the whole table PostgreSQL's ``reltuples``
    scaled to the table's current size): no row is read. None where the database gives
    no JSON plan (SQLite)."""
    if "JSON" not in connections[queryset.db].features.supported_explain_formats:
        return None
    try:
        plan = json.loads(queryset.order_by().explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])
    except (ValueError, LookupError, TypeError):  # another database's JSON plan
        return None


class JobPaginator(Paginator):
    """Counts at most ``COUNT_CAP`` matching jobs (``SELECT COUNT(*) FROM (... LIMIT
    COUNT_CAP + 1)``, a few milliseconds whatever the table holds); past that the count
    is the database's estimate, shown as "about N" (``count_is``), or, where there is no
    estimate (SQLite), ``COUNT_CAP`` shown as "more than N". Never a ``COUNT(*)`` that
    reads every matching row."""

    #: "" for an exact count, else the word the templates put before it.
    count_is = ""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        counted = queryset.order_by()[:COUNT_CAP + 1].count()
        if counted <= COUNT_CAP:
            return counted
        estimate = _estimated_rows(queryset)
        if estimate is None:
            self.count_is = _("more than")
            return COUNT_CAP
        self.count_is = _("about")
        return max(counted, estimate)


class AdminJobQuerySet(JobQuerySet):
    """The job list's queryset: its date drill-down finds the years, months or days that
    have jobs by one ``MIN(enqueued_at)`` index probe per value found, instead of a
    ``SELECT DISTINCT date_trunc(...)`` over every matching row."""

    def datetimes(self, field_name: str, kind: str, order: str = "ASC",
                  tzinfo: Any = None) -> Any:
        if field_name != "enqueued_at" or kind not in ("year", "month", "day") \
                or order != "ASC" or not settings.USE_TZ:
            return super().datetimes(field_name, kind, order, tzinfo)
        zone = tzinfo or timezone.get_current_timezone()
        rows = self.order_by()
        found: list[datetime] = []
        after = None
        while len(found) < 400:
            later = rows if after is None else rows.filter(enqueued_at__gte=after)
            first = later.aggregate(first=Min("enqueued_at"))["first"]
            if first is None:
                break
            start = first.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
            if kind == "day":
                found.append(start)
                after = datetime.combine(start.date() + timedelta(days=1), time(), zone)
            elif kind == "month":
                found.append(start.replace(day=1))
                after = start.replace(day=1, month=start.month % 12 + 1,
                                      year=start.year + start.month // 12)
            else:
                found.append(start.replace(day=1, month=1))
                after = start.replace(day=1, month=1, year=start.year + 1)
        return found


class FixedValuesFilter(admin.AllValuesFieldListFilter):
    """Django's filter by a column's values, its choices from ``values()`` instead of a
    ``SELECT DISTINCT`` over the table (a full scan at millions of jobs)."""

    def __init__(self, field: Any, request: HttpRequest, params: Any, model: Any,
                 model_admin: Any, field_path: str) -> None:
        self.lookup_kwarg = field_path
        self.lookup_kwarg_isnull = f"{field_path}__isnull"
        self.lookup_val = params.get(self.lookup_kwarg)
        self.lookup_val_isnull = get_last_value_from_parameters(
            params, self.lookup_kwarg_isnull)
        self.empty_value_display = model_admin.get_empty_value_display()
        values = set(self.values(request, model_admin.get_queryset(request).db))
        values.update(self.lookup_val or ())  # a chosen value stays shown
        self.lookup_choices = sorted(values)
        admin.FieldListFilter.__init__(self, field, request, params, model, model_admin,
                                       field_path)

    def values(self, request: HttpRequest, using: str) -> list[str]:
        raise NotImplementedError


class QueueFilter(FixedValuesFilter):
    """The queues of the TASKS setting's backends."""

    def values(self, request: HttpRequest, using: str) -> list[str]:
        queues = {"default"}
        for alias in settings.TASKS:
            try:
                queues.update(task_backends[alias].queues)
            except Exception:  # a backend that fails to load shows its error elsewhere
                continue
        return list(queues)


class BackendFilter(FixedValuesFilter):
    """The aliases of the TASKS setting."""

    def values(self, request: HttpRequest, using: str) -> list[str]:
        return list(settings.TASKS)


class TaskFilter(FixedValuesFilter):
    """The task paths jobs have, by the task index (``task_paths``)."""

    def values(self, request: HttpRequest, using: str) -> list[str]:
        return request_task_paths(request, using)


class WorkerFilter(FixedValuesFilter):
    """The workers most recently started (the worker table is small; its ids, not the
    job table's, so no scan): a worker's jobs by the ``django_tasks_job_worker`` index."""

    title = _("worker")

    def values(self, request: HttpRequest, using: str) -> list[str]:
        return list(Worker.objects.using(using).order_by("-started_at")
                    .values_list("id", flat=True)[:WORKERS_SHOWN])


class ScheduleFilter(admin.SimpleListFilter):
    """Jobs a schedule enqueued (linked from the schedule's page)."""

    title = _("schedule")
    parameter_name = "schedule"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in
                Schedule.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        if not self.value() or not self.value().isdigit():
            return queryset
        ticks = ScheduleTick.objects.filter(schedule_id=self.value(), job_id__isnull=False)
        return queryset.filter(id__in=ticks.values("job_id"))


@admin.register(Job)
class JobAdmin(JobActionsMixin, JobPageMixin, ReadOnlyMixin, admin.ModelAdmin):
    """The job list, for operators: short ids, the state (a READY job not due yet reads
    SCHEDULED) and how long it has been in it, the last error of a failed job, the
    worker, times to the second. Actions in ``actions.py``, the job page in ``page.py``."""

    list_display = (
        "short_id", "task_path", "state_display", "for_display", "error_display",
        "queue_name", "worker_display", "attempts_display", "progress_display",
        "enqueued_display", "finished_display",
    )
    # Every part of the list is served by an index at millions of jobs (docs/admin.md,
    # "Millions of jobs"; benchmarks/admin_pages.py): fixed filter choices, counts capped
    # or estimated (JobPaginator), search by equality only, sorting by indexed columns.
    list_filter = ("status", ("queue_name", QueueFilter), ("backend", BackendFilter),
                   ("task_path", TaskFilter), ("worker_id", WorkerFilter), ScheduleFilter)
    search_fields = ("=id", "task_path", "=unique_key")  # see get_search_results
    ordering = ("-enqueued_at",)
    sortable_by = ("short_id", "enqueued_display")
    date_hierarchy = "enqueued_at"
    list_per_page = 50
    paginator = JobPaginator
    show_full_result_count = False  # COUNT(*) over millions of rows is not free

    def changelist_view(self, request: HttpRequest,
                        extra_context: dict[str, Any] | None = None) -> Any:
        """The links to retry every failed job matching the filters, and to purge the
        queue the list is filtered by, for users who may."""
        extra = {"can_retry": self.has_retry_permission(request),
                 "can_purge": self.has_delete_permission(request),
                 "purge_queue": request.GET.get("queue_name", "")}
        return super().changelist_view(request, {**extra, **(extra_context or {})})

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, job: Job) -> str:
        """The last 8 characters (``summary.short_id``; the whole id on hover; the cell
        links to the page)."""
        return format_html('<span title="{}">{}</span>', job.pk, summary.short_id(job.pk))

    @admin.display(description=_("state"))
    def state_display(self, job: Job) -> str:
        current = summary.state(job, timezone.now())
        if current == summary.SCHEDULED:
            return format_html('<span title="{}">{}</span>', _("READY, not due until %s")
                               % seconds(job.available_at), _("Scheduled"))
        return job.get_status_display()

    @admin.display(description=_("for"))
    def for_display(self, job: Job) -> str:
        return summary.state_for(job, timezone.now()) or "-"

    @admin.display(description=_("error"))
    def error_display(self, job: Job) -> str:
        line = summary.error_line(job, width=80)
        if not line:
            return "-"
        return format_html('<span title="{}">{}</span>', summary.error_line(job, 1000), line)

    @admin.display(description=_("worker"))
    def worker_display(self, job: Job) -> str:
        return worker_link(job.worker_id)

    @admin.display(description=_("enqueued"), ordering="enqueued_at")
    def enqueued_display(self, job: Job) -> str:
        return seconds(job.enqueued_at)

    @admin.display(description=_("finished"))
    def finished_display(self, job: Job) -> str:
        return seconds(job.finished_at)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        queryset = super().get_queryset(request)
        return AdminJobQuerySet(model=Job, query=queryset.query, using=queryset._db)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Job],
                           search_term: str) -> tuple[QuerySet[Job], bool]:
        """An exact job id (the primary key), an exact unique key, or part of a task path
        (case-insensitive), each by equality on an indexed column: the task paths that
        contain the term are found first (``task_paths``), then their jobs by
        ``task_path IN (...)``; never a ``LIKE`` over every row. A term that is a UUID
        is looked for as a job id or unique key only."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(unique_key=term)
        try:
            match |= Q(pk=uuid.UUID(term))
        except ValueError:
            paths = [path for path in request_task_paths(request, queryset.db)
                     if term.lower() in path.lower()]
            if paths:
                match |= Q(task_path__in=paths)
        return queryset.filter(match), False
