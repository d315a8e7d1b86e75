"""The workers page."""

from __future__ import annotations

from django.contrib import admin
from django.tasks import task_backends
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..conf import BackendOptions
from ..models import Worker
from .common import ReadOnlyMixin


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
