"""The workers page: each worker's state, queues, the jobs it holds now, and a link to
every job it ran (the job list's worker filter)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.tasks import task_backends
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _

from ..conf import BackendOptions
from ..jobs import summary
from ..models import Job, Worker
from .common import ReadOnlyMixin, human_bytes, seconds

#: Jobs a worker holds listed on its page.
RUNNING_SHOWN = 50


def held_by(worker: OuterRef | str, using: str | None = None) -> QuerySet[Job]:
    """The jobs a worker holds (claimed or running), by the ``django_tasks_job_held``
    index."""
    return Job.objects.using(using).held().filter(worker_id=worker)


@admin.register(Worker)
class WorkerAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "state", "hostname", "pid", "pool", "concurrency", "queues_display",
                    "holds", "processed", "failed", "outages_display", "memory_display",
                    "jobs_link", "started_display", "heartbeat_display", "stopped_display",
                    "stop_reason")
    list_filter = ("hostname", "pool")
    search_fields = ("id", "hostname")
    ordering = ("-started_at",)
    fields = ("id", "state", "backend", "hostname", "pid", "process_key", "pool",
              "concurrency", "queues_display", "holds", "running_display", "jobs_link",
              "processed", "failed", "outages_display", "memory_display",
              "started_display", "heartbeat_display", "stopped_display", "stop_reason")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        """Each worker with how many jobs it holds, counted in the same query (a
        correlated count on the held-jobs index: no query per row)."""
        held = (held_by(OuterRef("pk")).order_by().values("worker_id")
                .annotate(n=Count("pk")).values("n"))
        return super().get_queryset(request).annotate(
            held=Coalesce(Subquery(held, output_field=IntegerField()), 0))

    @admin.display(description=_("state"))
    def state(self, worker: Worker) -> str:
        """alive, dead (silent past WORKER_TIMEOUT: its jobs are about to be rescued), stopped."""
        try:
            timeout = task_backends[worker.backend].config.worker_timeout
        except Exception:  # a backend this deploy no longer has
            timeout = BackendOptions.worker_timeout
        return worker.state(timezone.now(), timeout)

    @admin.display(description=_("queues"))
    def queues_display(self, worker: Worker) -> str:
        queues = worker.queues if isinstance(worker.queues, list) else [worker.queues]
        return ", ".join(str(q) for q in queues) or "-"

    @admin.display(description=_("holds"), ordering="held")
    def holds(self, worker: Worker) -> int:
        """Jobs claimed or running on it now."""
        return getattr(worker, "held", 0)

    @admin.display(description=_("outages"), ordering="outages")
    def outages_display(self, worker: Worker) -> str:
        """Outages of its broker or database it has ridden out since it started, and
        whether it is in one now (as of its last heartbeat; a worker that is not alive
        is in none now, whatever its last heartbeat said)."""
        if worker.in_outage and self.state(worker) == "alive":
            return format_html('{} <strong class="errornote">{}</strong>', worker.outages,
                               _("in one now"))
        return str(worker.outages)

    @admin.display(description=_("memory"), ordering="memory")
    def memory_display(self, worker: Worker) -> str:
        """Resident memory of the worker and its pool children, at its last heartbeat."""
        return human_bytes(worker.memory)

    @admin.display(description=_("jobs"))
    def jobs_link(self, worker: Worker) -> str:
        url = reverse("admin:django_tasks_job_changelist") + "?" + urlencode(
            {"worker_id": worker.pk})
        return format_html('<a href="{}">{}</a>', url, _("its jobs"))

    @admin.display(description=_("running now"))
    def running_display(self, worker: Worker) -> str:
        """The jobs it holds, longest running first."""
        now = timezone.now()
        jobs = list(held_by(worker.pk, worker._state.db).order_by("last_attempted_at")
                    .only("id", "task_path", "status", "available_at", "last_attempted_at",
                          "attempts", "max_attempts")[:RUNNING_SHOWN + 1])
        if not jobs:
            return "-"
        rows = format_html_join("", '<div><a href="{}" title="{}">{}</a> {} ({}, {})</div>', (
            (reverse("admin:django_tasks_job_change", args=[job.pk]), job.pk,
             summary.short_id(job.pk), job.task_path, job.status, summary.state_for(job, now))
            for job in jobs[:RUNNING_SHOWN]))
        more = _("... and more") if len(jobs) > RUNNING_SHOWN else ""
        return format_html("{}{}", rows, more)

    @admin.display(description=_("started"), ordering="started_at")
    def started_display(self, worker: Worker) -> str:
        return seconds(worker.started_at)

    @admin.display(description=_("last heartbeat"), ordering="last_heartbeat_at")
    def heartbeat_display(self, worker: Worker) -> str:
        if worker.last_heartbeat_at is None:
            return "-"
        ago = summary.age(timezone.now() - worker.last_heartbeat_at)
        return format_html("{} ({} {})", seconds(worker.last_heartbeat_at), ago, _("ago"))

    @admin.display(description=_("stopped"))
    def stopped_display(self, worker: Worker) -> str:
        return seconds(worker.stopped_at)

