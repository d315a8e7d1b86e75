"""The job list and job page: fast at millions of rows, retry and cancel with permission."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import get_last_value_from_parameters
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Min, Q, QuerySet
from django.http import HttpRequest
from django.tasks import task_backends
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import Job, JobQuerySet, Schedule, ScheduleTick
from .common import ReadOnlyMixin, pretty

#: Jobs of a workflow listed on a job's page.
WORKFLOW_SHOWN = 50
#: The job list counts matching jobs up to this many; past it the count is PostgreSQL's
#: estimate ("about N"; "more than N" on SQLite), so a listing never reads every
#: matching row (JobPaginator).
COUNT_CAP = 10_000
#: At most this many task paths are offered by the task filter and matched by search
#: (one index probe each).
TASK_PATHS_SHOWN = 200


def task_paths(using: str, limit: int = TASK_PATHS_SHOWN) -> list[str]:
    """The distinct task paths of the job table, in order: a loose index scan, one
    ``ORDER BY task_path LIMIT 1`` probe of the ``django_tasks_job_task`` index per path
    (tens of paths, tens of sub-millisecond look-ups) instead of a ``SELECT DISTINCT``
    that reads every row."""
    jobs = Job.objects.using(using).order_by("task_path").values_list("task_path", flat=True)
    paths: list[str] = []
    while len(paths) < limit:
        path = (jobs.filter(task_path__gt=paths[-1]) if paths else jobs).first()
        if path is None:
            break
        paths.append(path)
    return paths


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
class JobAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id", "task_path", "status", "progress_display", "queue_name", "priority",
        "attempts_display", "enqueued_at", "started_at", "finished_at", "duration_display",
    )
    # Every part of the list is served by an index at millions of jobs (docs/admin.md,
    # "Millions of jobs"; benchmarks/admin_pages.py): fixed filter choices, counts capped
    # or estimated (JobPaginator), search by equality only, sorting by indexed columns.
    list_filter = ("status", ("queue_name", QueueFilter), ("backend", BackendFilter),
                   ("task_path", TaskFilter), ScheduleFilter)
    search_fields = ("=id", "task_path", "=unique_key")  # see get_search_results
    ordering = ("-enqueued_at",)
    sortable_by = ("id", "enqueued_at")
    date_hierarchy = "enqueued_at"
    list_per_page = 50
    paginator = JobPaginator
    show_full_result_count = False  # COUNT(*) over millions of rows is not free
    actions = ["retry_jobs", "cancel_jobs"]
    fieldsets = (
        (None, {"fields": ("id", "task_path", "status", "queue_name", "priority", "backend",
                           "unique_key", "worker_id", "attempts_display",
                           "progress_display", "cancellation_display", "schedule_display",
                           "workflow_display")}),
        (_("Call"), {"fields": ("args_display", "kwargs_display")}),
        (_("Outcome"), {"fields": ("return_value_display", "errors_display")}),
        (_("Timing"), {"fields": ("enqueued_at", "run_after", "available_at", "started_at",
                                  "last_attempted_at", "finished_at", "duration_display",
                                  "worker_ids")}),
    )
    readonly_fields = (
        "id", "task_path", "status", "queue_name", "priority", "backend", "unique_key",
        "worker_id", "attempts_display", "progress_display", "cancellation_display",
        "args_display", "kwargs_display",
        "return_value_display", "errors_display", "enqueued_at", "run_after", "available_at",
        "started_at", "last_attempted_at", "finished_at", "duration_display", "worker_ids",
        "schedule_display", "workflow_display",
    )

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

    @admin.display(description=_("workflow"))
    def workflow_display(self, job: Job) -> str:
        """The other jobs of this job's chain, group or chord, in the order enqueued."""
        if job.workflow_id is None:
            return "-"
        others = (Job.objects.using(job._state.db).filter(workflow_id=job.workflow_id)
                  .order_by("enqueued_at", "id").values_list("id", "task_path", "status"))
        shown = list(others[:WORKFLOW_SHOWN + 1])
        rows = format_html_join(
            "", "<div>{}</div>",
            ((format_html("<strong>{}</strong> ({}, {})", path, status, _("this job"))
              if pk == job.pk else
              format_html('<a href="{}">{}</a> ({})',
                          reverse("admin:django_tasks_job_change", args=[pk]), path, status),)
             for pk, path, status in shown[:WORKFLOW_SHOWN]),
        )
        more = _("... and more") if len(shown) > WORKFLOW_SHOWN else ""
        return format_html("{}{}", rows, more)

    @admin.display(description=_("schedule"))
    def schedule_display(self, job: Job) -> str:
        """The schedule (and tick) that enqueued this job, if one did."""
        tick = (ScheduleTick.objects.using(job._state.db).filter(job_id=job.pk)
                .select_related("schedule").first())
        if tick is None:
            return "-"
        url = reverse("admin:django_tasks_schedule_change", args=[tick.schedule_id])
        kind = _("run by hand") if tick.manual else _("tick")
        return format_html('<a href="{}">{}</a> ({} {})', url, tick.schedule.name, kind,
                           tick.tick_at.isoformat())

    @admin.display(description=_("progress"))
    def progress_display(self, job: Job) -> str:
        """A bar (current of total) and the task's message, from its latest report."""
        progress = job.progress
        if not isinstance(progress, dict):
            return "-"
        current, total = progress.get("current"), progress.get("total")
        message = progress.get("message") or ""
        numbers = isinstance(current, int | float) and isinstance(total, int | float)
        if numbers and total > 0:
            return format_html('<progress value="{}" max="{}" title="{}"></progress> {}/{} {}',
                               current, total, message, current, total, message)
        return format_html("{} {}", current if current is not None else "", message)

    @admin.display(description=_("cancellation"))
    def cancellation_display(self, job: Job) -> str:
        if not job.cancellation:
            return "-"
        done = job.status == "CANCELLED"
        return format_html("{} {} ({})", _("cancelled") if done else _("asked, worker to stop it"),
                           job.cancellation.get("occurred_at", ""),
                           job.cancellation.get("message", ""))

    @admin.display(description=_("attempts"))
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description=_("duration"))
    def duration_display(self, job: Job) -> str:
        return f"{job.duration.total_seconds():.3f}s" if job.duration is not None else "-"

    @admin.display(description=_("args"))
    def args_display(self, job: Job) -> str:
        return pretty(job.args)

    @admin.display(description=_("kwargs"))
    def kwargs_display(self, job: Job) -> str:
        return pretty(job.kwargs)

    @admin.display(description=_("return value"))
    def return_value_display(self, job: Job) -> str:
        return pretty(job.return_value) if job.status == "SUCCESSFUL" else "-"

    @admin.display(description=_("errors"))
    def errors_display(self, job: Job) -> str:
        if not job.errors:
            return "-"
        return format_html_join(
            "",
            "<div><strong>Attempt {} on {} at {}: {}</strong>: {}<pre>{}</pre></div>",
            (
                (e.get("attempt"), e.get("worker_id") or "?", e.get("occurred_at"),
                 e.get("exception_class_path"), e.get("message"), e.get("traceback"))
                for e in job.errors
            ),
        )

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_tasks.retry_job")

    @admin.action(description=_("Retry selected failed jobs"), permissions=["retry"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        selected = queryset.count()
        # Through the backend, as any enqueue: workers wake and task_enqueued is sent.
        retried = 0
        by_backend: dict[str, list[Any]] = {}
        for job_id, alias in queryset.values_list("id", "backend"):
            by_backend.setdefault(alias, []).append(job_id)
        for alias, ids in by_backend.items():
            retried += len(task_backends[alias].retry(ids))
        self.message_user(
            request,
            ngettext("%d job queued again.", "%d jobs queued again.", retried) % retried,
            messages.SUCCESS,
        )
        if retried < selected:
            self.message_user(
                request, _("Only FAILED jobs can be retried, and a unique job only while no "
                           "other job holds its key; %d skipped.") % (selected - retried),
                messages.WARNING,
            )


    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_tasks.cancel_job")

    @admin.action(description=_("Cancel selected jobs"), permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        # Through the backend, as result.cancel() does: workflows move on, workers notice.
        by_backend: dict[str, list[Any]] = {}
        for job_id, alias in queryset.values_list("id", "backend"):
            by_backend.setdefault(alias, []).append(job_id)
        counts = {"cancelled": 0, "cancelling": 0}
        skipped = 0
        who = f"admin user {request.user.get_username()}"
        for alias, ids in by_backend.items():
            for what in task_backends[alias].cancel(ids, by=who).values():
                if what in counts:
                    counts[what] += 1
                else:
                    skipped += 1
        if counts["cancelled"]:
            self.message_user(request, ngettext(
                "%d job cancelled (it had not started).",
                "%d jobs cancelled (they had not started).", counts["cancelled"],
            ) % counts["cancelled"], messages.SUCCESS)
        if counts["cancelling"]:
            self.message_user(request, ngettext(
                "%d running job is being cancelled: it ends CANCELLED once its worker "
                "notices.", "%d running jobs are being cancelled: they end CANCELLED once "
                "their workers notice.", counts["cancelling"],
            ) % counts["cancelling"], messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext(
                "%d job was already finished (or being cancelled); nothing to do.",
                "%d jobs were already finished (or being cancelled); nothing to do.", skipped,
            ) % skipped, messages.WARNING)
