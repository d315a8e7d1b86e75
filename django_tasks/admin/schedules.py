"""Periodic schedules: edit, switch on and off, run now."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.tasks import task_backends
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import Schedule


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Periodic schedules: switch them on and off, change their timing, run them now.

    Rows from ``OPTIONS["SCHEDULE"]`` keep their task and arguments as the settings say;
    their timing and on/off switch may be edited here (a change of that entry in the
    settings overwrites the timing again, never the switch).
    """

    list_display = ("name", "task_path", "timing_display", "state_display", "next_run_at",
                    "last_run_at", "jobs_link", "origin")
    list_filter = ("enabled", "origin", "backend")
    search_fields = ("name", "task_path")
    ordering = ("name",)
    actions = ["enable", "disable", "run_now"]
    fieldsets = (
        (None, {"fields": ("name", "backend", "task_path", "args", "kwargs", "queue_name",
                           "priority", "enabled")}),
        (_("Timing"), {"fields": ("cron", "interval", "timezone", "catch_up")}),
        (_("Runs"), {"fields": ("origin", "state_display", "next_run_at", "last_run_at",
                                "last_error", "ticks_display")}),
    )
    readonly_fields = ("origin", "state_display", "next_run_at", "last_run_at", "last_error",
                       "ticks_display")
    #: What settings own on a row that came from OPTIONS["SCHEDULE"].
    settings_fields = ("name", "backend", "task_path", "args", "kwargs", "queue_name",
                       "priority")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(self.readonly_fields)
        if obj is not None and obj.origin == Schedule.Origin.SETTINGS:
            fields += self.settings_fields
        return fields

    @admin.display(description=_("timing"))
    def timing_display(self, schedule: Schedule) -> str:
        return schedule.describe()

    @admin.display(description=_("state"))
    def state_display(self, schedule: Schedule) -> str:
        return schedule.state

    @admin.display(description=_("jobs"))
    def jobs_link(self, schedule: Schedule) -> str:
        url = reverse("admin:django_tasks_job_changelist") + f"?schedule={schedule.pk}"
        return format_html('<a href="{}">{}</a>', url, _("jobs"))

    @admin.display(description=_("recent runs"))
    def ticks_display(self, schedule: Schedule) -> str:
        if schedule.pk is None:
            return "-"
        ticks = schedule.ticks.order_by("-tick_at")[:20]
        if not ticks:
            return _("none yet")
        return format_html_join(
            "", "<div>{} {}: {}</div>",
            ((tick.tick_at.isoformat(), _("(run by hand)") if tick.manual else "",
              format_html('<a href="{}">{}</a>',
                          reverse("admin:django_tasks_job_change", args=[tick.job_id]),
                          tick.job_id) if tick.job_id else tick.error)
             for tick in ticks),
        )

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        timing = ("cron", "interval", "timezone", "enabled")
        if not change or any(name in form.changed_data for name in timing):
            # Ticks count from now: switching on or retiming never fires missed ones.
            obj.restart_at(task_backends[obj.backend].store.now())
        super().save_model(request, obj, form, change)

    @admin.action(description=_("Enable selected schedules"), permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        count = 0
        for schedule in queryset.filter(enabled=False):
            schedule.enabled = True
            schedule.restart_at(task_backends[schedule.backend].store.now())
            schedule.save()
            count += 1
        self.message_user(request, ngettext("%d schedule enabled.", "%d schedules enabled.",
                                            count) % count, messages.SUCCESS)

    @admin.action(description=_("Disable selected schedules"), permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        count = queryset.filter(enabled=True).update(enabled=False)
        self.message_user(request, ngettext("%d schedule disabled.", "%d schedules disabled.",
                                            count) % count, messages.SUCCESS)

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_tasks.run_schedule")

    @admin.action(description=_("Run selected schedules now"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        from ..beat.scheduler import Scheduler

        for schedule in queryset:
            fired = Scheduler(schedule.backend).run_now(schedule)
            if fired.error:
                self.message_user(request, _("%(name)s: not enqueued: %(error)s") % {
                    "name": schedule.name, "error": fired.error}, messages.ERROR)
            else:
                self.message_user(request, _("%(name)s: job %(job)s enqueued.") % {
                    "name": schedule.name, "job": fired.job_id}, messages.SUCCESS)
