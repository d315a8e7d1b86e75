"""The admin: watch jobs and workers; retry failed jobs (with permission)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.tasks import task_backends
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .conf import BackendOptions
from .models import Job, Worker


def _pretty(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


class ReadOnlyMixin:
    """Jobs change through workers and actions, never by editing fields."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id", "task_path", "status", "queue_name", "priority", "attempts_display",
        "enqueued_at", "started_at", "finished_at", "duration_display",
    )
    list_filter = ("status", "queue_name", "backend", "task_path")
    search_fields = ("=id", "task_path")
    ordering = ("-enqueued_at",)
    date_hierarchy = "enqueued_at"
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over millions of rows is not free
    actions = ["retry_jobs"]
    fieldsets = (
        (None, {"fields": ("id", "task_path", "status", "queue_name", "priority", "backend",
                           "worker_id", "attempts_display", "progress")}),
        (_("Call"), {"fields": ("args_display", "kwargs_display")}),
        (_("Outcome"), {"fields": ("return_value_display", "errors_display")}),
        (_("Timing"), {"fields": ("enqueued_at", "run_after", "available_at", "started_at",
                                  "last_attempted_at", "finished_at", "duration_display",
                                  "worker_ids")}),
    )
    readonly_fields = (
        "id", "task_path", "status", "queue_name", "priority", "backend", "worker_id",
        "attempts_display", "progress", "args_display", "kwargs_display",
        "return_value_display", "errors_display", "enqueued_at", "run_after", "available_at",
        "started_at", "last_attempted_at", "finished_at", "duration_display", "worker_ids",
    )

    @admin.display(description=_("attempts"))
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description=_("duration"))
    def duration_display(self, job: Job) -> str:
        return f"{job.duration.total_seconds():.3f}s" if job.duration is not None else "-"

    @admin.display(description=_("args"))
    def args_display(self, job: Job) -> str:
        return _pretty(job.args)

    @admin.display(description=_("kwargs"))
    def kwargs_display(self, job: Job) -> str:
        return _pretty(job.kwargs)

    @admin.display(description=_("return value"))
    def return_value_display(self, job: Job) -> str:
        return _pretty(job.return_value) if job.status == "SUCCESSFUL" else "-"

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
                request, _("Only FAILED jobs can be retried; %d skipped.") % (selected - retried),
                messages.WARNING,
            )


@admin.register(Worker)
class WorkerAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "state", "hostname", "pid", "pool", "concurrency", "queues",
                    "started_at", "last_heartbeat_at", "stopped_at", "stop_reason")
    list_filter = ("hostname", "pool")
    search_fields = ("id", "hostname")
    ordering = ("-started_at",)
    readonly_fields = [f.name for f in Worker._meta.fields]

    @admin.display(description=_("state"))
    def state(self, worker: Worker) -> str:
        """alive, dead (silent past WORKER_TIMEOUT: its jobs are about to be rescued), stopped."""
        try:
            timeout = task_backends[worker.backend].config.worker_timeout
        except Exception:  # a backend this deploy no longer has
            timeout = BackendOptions.worker_timeout
        return worker.state(timezone.now(), timeout)
