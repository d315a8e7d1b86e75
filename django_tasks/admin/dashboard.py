"""The dashboard: ``/admin/django_tasks/dashboard/``, the control room's first page.

Per queue: jobs ready now, scheduled for later, claimed and running, waiting (workflow
steps), failed in the last hour, the age of the oldest ready job and the throughput;
finished and failed per minute over the last hour, 24 hours or 7 days (per queue, per
task) as server-rendered SVG; time-in-queue and run-time percentiles per task; stuck
jobs, recent failures, workers and schedules. It refreshes itself every
``refresh_seconds`` from ``refresh/`` (the same view's body, as an HTML fragment: a few
lines of script in the page, no library).

Seeing it takes the view permission on jobs (or the change permission), nothing else.
Its data is read by :mod:`django_tasks.admin.stats`, each look-up from an index or the
statistics table, so it stays fast at millions of jobs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _

from ..models import Dashboard, Job
from . import stats
from .charts import bar_chart, duration
from .common import human_bytes

__all__ = ["DashboardAdmin"]


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """The dashboard, in the admin's place for a model (its index entry and URL)."""

    #: Seconds between two refreshes of the page's body.
    refresh_seconds = 5
    #: A READY job due for longer than this is listed as stuck.
    stuck_ready_after = timedelta(minutes=10)

    # -- permissions: the view permission on jobs is enough; nothing here changes -----------

    def _may_view(self, request: HttpRequest) -> bool:
        opts = Job._meta
        return any(request.user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")
                   for action in ("view", "change"))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_view(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may_view(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # -- views ------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("", view(self.dashboard_view), name="{}_{}_changelist".format(*info)),
            path("refresh/", view(self.refresh_view), name="{}_{}_refresh".format(*info)),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """The whole page."""
        return self._render(request, "admin/django_tasks/dashboard.html")

    def refresh_view(self, request: HttpRequest) -> HttpResponse:
        """The page's body alone (what the page's script swaps in); never cached, as
        every admin view (``admin_view``)."""
        return self._render(request, "admin/django_tasks/dashboard_body.html")

    def _render(self, request: HttpRequest, template: str) -> TemplateResponse:
        if not self._may_view(request):
            raise PermissionDenied
        span = request.GET.get("range", "1h")
        span = span if span in stats.RANGES else "1h"
        queue, task = request.GET.get("queue", ""), request.GET.get("task", "")
        now = timezone.now()
        snapshot = stats.read(now, span=span, queue=queue, task=task,
                              late_after=self.stuck_ready_after)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Dashboard"),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            "s": snapshot,
            "chart": bar_chart(snapshot.chart, snapshot.bucket),
            "span": span, "span_label": stats.RANGES[span][0], "queue": queue, "task": task,
            "bucket": stats.RANGES[span][3],
            "ranges": [(key, label, _query(range=key, queue=queue, task=task))
                       for key, (label, *_) in stats.RANGES.items()],
            "queues": self._queues(snapshot, span, task),
            "tasks": self._tasks(snapshot, span, queue),
            "stuck": [{**job, "since": _age(now, job["since"])} for job in snapshot.stuck],
            "failures": snapshot.failures,
            "workers": [{**w, "heartbeat": duration(w["heartbeat_age"]),
                         "memory": human_bytes(w["worker"].memory)} for w in snapshot.workers],
            "schedules": snapshot.schedules,
            "refresh_url": reverse(f"{self.admin_site.name}:django_tasks_dashboard_refresh"),
            "refresh_seconds": self.refresh_seconds,
            "jobs_url": reverse(f"{self.admin_site.name}:django_tasks_job_changelist"),
            "all_url": _query(range=span),
        }
        return TemplateResponse(request, template, context)

    def _queues(self, snapshot: stats.Snapshot, span: str, task: str) -> list[dict[str, Any]]:
        return [{
            "row": row, "key": f"{row.backend}:{row.queue}",
            "oldest": duration(row.oldest_age(snapshot.now)) if row.oldest_ready else "-",
            "per_minute": f"{row.per_minute:.1f}",
            "chart_url": _query(range=span, queue=f"{row.backend}:{row.queue}", task=task),
        } for row in snapshot.backlogs]

    def _tasks(self, snapshot: stats.Snapshot, span: str, queue: str) -> list[dict[str, Any]]:
        return [{
            **row, "run": [duration(v) for v in row["run"]],
            "wait": [duration(v) for v in row["wait"]],
            "chart_url": _query(range=span, queue=queue, task=row["task_path"]),
        } for row in snapshot.tasks]


def _query(**params: str) -> str:
    return "?" + urlencode({k: v for k, v in params.items() if v})


def _age(now: Any, since: Any) -> str:
    return duration(now - since) if since is not None else ""
