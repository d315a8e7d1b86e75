"""The job page: for a failed job the outcome first; the attempt timeline; links to its
worker(s), workflow and schedule; retry and cancel buttons for users who may use them
(the buttons POST to ``actions.py``'s views, which check the permission again)."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from ..jobs import summary
from ..models import Job, ScheduleTick
from ..states import FAILED, FINISHED
from .common import pretty, seconds, worker_link

__all__ = ["JobPageMixin"]

#: Jobs of a workflow listed on a job's page.
WORKFLOW_SHOWN = 50

SUMMARY = (None, {"fields": ("id", "task_path", "state_display", "for_display", "queue_name",
                             "priority", "backend", "unique_key", "worker_display",
                             "attempts_display", "progress_display", "cancellation_display",
                             "retried_display", "schedule_display", "workflow_display")})
OUTCOME = (_("Outcome"), {"fields": ("return_value_display", "errors_display")})
CALL = (_("Call"), {"fields": ("args_display", "kwargs_display")})
TIMING = (_("Timing"), {"fields": ("timeline_display", "enqueued_display", "run_after_display",
                                   "available_display", "expires_display", "started_display",
                                   "last_attempted_display", "finished_display",
                                   "duration_display", "workers_display")})


class JobPageMixin:
    """The job page's fields and buttons (mixed into JobAdmin)."""

    fieldsets = (SUMMARY, CALL, OUTCOME, TIMING)
    readonly_fields = tuple(name for _title, options in fieldsets
                            for name in options["fields"])

    # What JobAdmin provides; declared for readers and type checkers.
    has_retry_permission: Any
    has_cancel_permission: Any

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """A failed job's page opens on what went wrong."""
        if obj is not None and obj.status == FAILED:
            return (OUTCOME, SUMMARY, TIMING, CALL)
        return self.fieldsets

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The retry button for a FAILED job and the cancel button for an unfinished
        one, each only for users with that permission."""
        job = None
        if self.has_retry_permission(request) or self.has_cancel_permission(request):
            try:
                job = Job.objects.filter(pk=uuid.UUID(object_id)).only("status").first()
            except ValueError:  # Django's change view says there is no such job
                pass
        extra = {
            "can_retry": job is not None and job.status == FAILED
            and self.has_retry_permission(request),
            "can_cancel": job is not None and job.status not in FINISHED
            and self.has_cancel_permission(request),
        }
        return super().change_view(  # type: ignore[misc]
            request, object_id, form_url, {**extra, **(extra_context or {})})

    @admin.display(description=_("state"))
    def state_display(self, job: Job) -> str:
        current = summary.state(job, timezone.now())
        return "SCHEDULED (READY, not due yet)" if current == summary.SCHEDULED else current

    @admin.display(description=_("for"))
    def for_display(self, job: Job) -> str:
        return summary.state_for(job, timezone.now()) or "-"

    @admin.display(description=_("worker"))
    def worker_display(self, job: Job) -> str:
        return worker_link(job.worker_id)

    @admin.display(description=_("workers, one per attempt"))
    def workers_display(self, job: Job) -> str:
        if not job.worker_ids:
            return "-"
        return format_html_join(", ", "{}", ((worker_link(w),) for w in job.worker_ids))

    @admin.display(description=_("retried"))
    def retried_display(self, job: Job) -> str:
        if not isinstance(job.retried, dict):
            return "-"
        return format_html("{} {} {}", job.retried.get("at", ""), _("by"),
                           job.retried.get("by") or _("(not recorded)"))

    @admin.display(description=_("timeline"))
    def timeline_display(self, job: Job) -> str:
        """The attempts, oldest first: when, what, on which worker, and the traceback
        of each failure (folded)."""
        rows = []
        for event in summary.timeline(job):
            when = seconds(event.at) if not isinstance(event.at, str) else event.at
            worker = format_html(" {} {}", _("on"), worker_link(event.worker)) \
                if event.worker else ""
            trace = format_html("<details><summary>{}</summary><pre>{}</pre></details>",
                                _("traceback"), event.traceback) if event.traceback else ""
            rows.append((when, event.what, worker, trace))
        return format_html('<table class="django-tasks-timeline">{}</table>', format_html_join(
            "", "<tr><td>{}</td><td>{}{}{}</td></tr>", rows))

    @admin.display(description=_("enqueued"))
    def enqueued_display(self, job: Job) -> str:
        return seconds(job.enqueued_at)

    @admin.display(description=_("run after"))
    def run_after_display(self, job: Job) -> str:
        return seconds(job.run_after)

    @admin.display(description=_("available at"))
    def available_display(self, job: Job) -> str:
        return seconds(job.available_at)

    @admin.display(description=_("expires"))
    def expires_display(self, job: Job) -> str:
        """Celery's ``expires``: not started by then, it ends CANCELLED unrun."""
        return seconds(job.expires_at)

    @admin.display(description=_("started"))
    def started_display(self, job: Job) -> str:
        return seconds(job.started_at)

    @admin.display(description=_("last attempted"))
    def last_attempted_display(self, job: Job) -> str:
        return seconds(job.last_attempted_at)

    @admin.display(description=_("finished"))
    def finished_display(self, job: Job) -> str:
        return seconds(job.finished_at)

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
