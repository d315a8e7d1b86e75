"""What an operator does from the job admin: retry and cancel (selected jobs, or one job
from its page), retry every failed job matching the list's filters, purge a queue.

Each acts through ``django_tasks.jobs.actions`` (the code ``manage.py tasks`` runs
too), checks its permission on the server whatever the page showed (``retry_job``,
``cancel_job``; purging deletes, so ``delete_job``), asks for confirmation before
acting on more than the rows ticked, and is recorded in Django's admin log: who, when,
what and how many.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from ..jobs import actions
from ..models import Job

__all__ = ["JobActionsMixin", "log_action"]

#: The confirmation pages count matching jobs up to this many ("more than N" past it).
CONFIRM_COUNT_CAP = 1_000


def log_action(request: HttpRequest, message: str, *, count: int, flag: int = CHANGE,
               job_id: Any = None) -> None:
    """One admin log entry for an action: who (the request's user), when (now), what
    (``message``) and how many (``count``, in the entry's name). Tied to the job when
    it concerns one, so it shows in that job's history."""
    LogEntry.objects.create(
        user_id=request.user.pk, content_type_id=ContentType.objects.get_for_model(Job).pk,
        object_id=str(job_id) if job_id is not None else None,
        object_repr=(str(job_id) if job_id is not None
                     else ngettext("%d job", "%d jobs", count) % count)[:200],
        action_flag=flag, change_message=message)


def who(request: HttpRequest) -> str:
    """How a job records the operator: ``admin user <name>``."""
    return f"admin user {request.user.get_username()}"


def capped_count(queryset: QuerySet[Job]) -> tuple[int, bool]:
    """How many rows ``queryset`` matches, reading at most ``CONFIRM_COUNT_CAP + 1``;
    and whether there are more."""
    n = queryset.order_by()[:CONFIRM_COUNT_CAP + 1].count()
    return min(n, CONFIRM_COUNT_CAP), n > CONFIRM_COUNT_CAP


class JobActionsMixin:
    """The job admin's actions, buttons and confirmation pages (mixed into JobAdmin)."""

    actions = ["retry_jobs", "cancel_jobs"]

    # What ModelAdmin provides; declared for readers and type checkers.
    admin_site: Any
    message_user: Any
    get_changelist_instance: Any
    has_delete_permission: Any
    opts: Any

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_tasks.retry_job")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("django_tasks.cancel_job")

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/retry/", wrap(self.retry_one_view),
                 name="django_tasks_job_retry"),
            path("<path:object_id>/cancel/", wrap(self.cancel_one_view),
                 name="django_tasks_job_cancel"),
            path("retry-failed/", wrap(self.retry_failed_view),
                 name="django_tasks_job_retry_failed"),
            path("purge/", wrap(self.purge_view), name="django_tasks_job_purge"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    # -- the list's actions on ticked jobs -------------------------------------------

    def report_retried(self, request: HttpRequest, done: actions.Retried) -> None:
        retried = len(done.ids)
        self.message_user(request, ngettext("%d job queued again.", "%d jobs queued again.",
                                            retried) % retried, messages.SUCCESS)
        if done.skipped:
            self.message_user(request, _("Skipped: %s.") % done.skipped_text(),
                              messages.WARNING)

    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        jobs = queryset.model._base_manager.using(queryset.db)
        done, asked, first = actions.Retried(), 0, None
        for ids in actions.id_batches(queryset):  # "select all" may be millions
            done.add(actions.retry(jobs, ids, by=who(request)))
            asked, first = asked + len(ids), first or ids[0]
        self.report_retried(request, done)
        log_action(request, _("Retried %(n)d of %(asked)d selected job(s)%(skipped)s") % {
            "n": len(done.ids), "asked": asked,
            "skipped": f"; skipped: {done.skipped_text()}" if done.skipped else ""},
            count=len(done.ids), job_id=first if asked == 1 else None)

    retry_jobs.allowed_permissions = ("retry",)  # type: ignore[attr-defined]
    retry_jobs.short_description = _("Retry selected failed jobs")  # type: ignore[attr-defined]

    def report_cancelled(self, request: HttpRequest, done: actions.Cancelled) -> None:
        cancelled, cancelling = done.count("cancelled"), done.count("cancelling")
        skipped = len(done.each) - cancelled - cancelling
        if cancelled:
            self.message_user(request, ngettext(
                "%d job cancelled (it had not started).",
                "%d jobs cancelled (they had not started).", cancelled) % cancelled,
                messages.SUCCESS)
        if cancelling:
            self.message_user(request, ngettext(
                "%d running job is being cancelled: it ends CANCELLED once its worker "
                "notices.", "%d running jobs are being cancelled: they end CANCELLED once "
                "their workers notice.", cancelling) % cancelling, messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext(
                "%d job was already finished (or being cancelled); nothing to do.",
                "%d jobs were already finished (or being cancelled); nothing to do.",
                skipped) % skipped, messages.WARNING)

    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        jobs = queryset.model._base_manager.using(queryset.db)
        done, ids = actions.Cancelled(), []
        for batch in actions.id_batches(queryset):  # "select all" may be millions
            done.each.update(actions.cancel(jobs, batch, by=who(request)).each)
            ids += batch[:2 - len(ids)]
        asked = len(done.each)
        self.report_cancelled(request, done)
        n = done.count("cancelled") + done.count("cancelling")
        log_action(request, _("Cancelled %(n)d of %(asked)d selected job(s) (%(now)d at once, "
                              "%(later)d by their workers)") % {
            "n": n, "asked": asked, "now": done.count("cancelled"),
            "later": done.count("cancelling")},
            count=n, job_id=ids[0] if asked == 1 else None)

    cancel_jobs.allowed_permissions = ("cancel",)  # type: ignore[attr-defined]
    cancel_jobs.short_description = _("Cancel selected jobs")  # type: ignore[attr-defined]

    # -- the job page's buttons -----------------------------------------------------

    def _one(self, request: HttpRequest, object_id: str, allowed: bool) -> QuerySet[Job]:
        if request.method != "POST":
            raise PermissionDenied  # a GET never acts (the buttons POST, with CSRF)
        if not allowed:
            raise PermissionDenied
        jobs = self.get_queryset(request)  # type: ignore[attr-defined]
        return jobs.filter(pk=self.to_pk(object_id))

    @staticmethod
    def to_pk(object_id: str) -> Any:
        import uuid

        try:
            return uuid.UUID(object_id)
        except ValueError:
            raise PermissionDenied from None

    def _back(self, object_id: str) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:django_tasks_job_change", args=[object_id]))

    def retry_one_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        jobs = self._one(request, object_id, self.has_retry_permission(request))
        self.retry_jobs(request, jobs)
        return self._back(object_id)

    def cancel_one_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        jobs = self._one(request, object_id, self.has_cancel_permission(request))
        self.cancel_jobs(request, jobs)
        return self._back(object_id)

    # -- confirmation pages ------------------------------------------------------------

    def _confirm(self, request: HttpRequest, title: str, lines: list[str],
                 button: str, back: str) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "opts": self.opts,
                   "title": title, "lines": lines, "button": button, "back": back,
                   "query": request.GET.urlencode()}
        return TemplateResponse(request, "admin/django_tasks/job/confirm_action.html", context)

    def retry_failed_view(self, request: HttpRequest) -> HttpResponse:
        """Retry every FAILED job the list shows with the filters and search of its query
        string, after a confirmation page that says how many."""
        if not self.has_retry_permission(request):
            raise PermissionDenied
        back = reverse("admin:django_tasks_job_changelist")
        params = request.GET.copy()
        params.pop("status__exact", None)  # the failed ones of the selection, whatever it
        request.GET = params               # showed; the selection's other filters apply
        selection = self.get_changelist_instance(request).get_queryset(request)
        failed = selection.filter(status="FAILED")
        back += "?" + urlencode({**params.dict(), "status__exact": "FAILED"})
        if request.method == "POST":
            done = actions.retry_failed_in(selection, by=who(request))
            self.report_retried(request, done)
            log_action(request, _("Retried all failed jobs matching %(filter)s: %(n)d "
                                  "retried%(skipped)s") % {
                "filter": params.urlencode() or _("(no filter)"), "n": len(done.ids),
                "skipped": f"; skipped: {done.skipped_text()}" if done.skipped else ""},
                count=len(done.ids))
            return HttpResponseRedirect(back)
        n, more = capped_count(failed)
        filters = ", ".join(f"{k} = {v}" for k, v in params.items()) or _("none")
        return self._confirm(request, _("Retry all failed jobs matching this filter?"), [
            _("Filter: %s.") % filters,
            (_("More than %d failed jobs match.") if more else _("%d failed job(s) match."))
            % n,
            _("Each is queued again for one more attempt, in batches of %d; workflow steps "
              "that never ran and unique jobs whose key is taken are skipped.")
            % actions.BATCH,
        ], _("Yes, retry them"), back)

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        """Delete a queue's READY and finished jobs (``jobs.actions.purgeable``), after a
        confirmation page that says what stays."""
        if not self.has_delete_permission(request):
            raise PermissionDenied
        queue = request.GET.get("queue_name", "")
        back = reverse("admin:django_tasks_job_changelist")
        if not queue:
            self.message_user(request, _("Choose a queue with the queue filter first."),
                              messages.WARNING)
            return HttpResponseRedirect(back)
        jobs = self.get_queryset(request)  # type: ignore[attr-defined]
        if request.GET.get("backend"):
            jobs = jobs.filter(backend=request.GET["backend"])
        back += "?" + urlencode({"queue_name": queue})
        if request.method == "POST":
            deleted = actions.purge(jobs, queue)
            total = deleted["ready"] + deleted["finished"]
            self.message_user(request, _(
                "Queue %(queue)s purged: %(ready)d ready and %(finished)d finished job(s) "
                "deleted.") % {"queue": queue, **deleted}, messages.SUCCESS)
            log_action(request, _("Purged queue %(queue)s: deleted %(ready)d ready and "
                                  "%(finished)d finished job(s)") % {"queue": queue, **deleted},
                       count=total, flag=DELETION)
            return HttpResponseRedirect(back)
        n, more = capped_count(actions.purgeable(jobs, queue))
        return self._confirm(request, _("Purge queue %s?") % queue, [
            (_("More than %d jobs would be deleted.") if more
             else _("%d job(s) would be deleted.")) % n,
            _("Deleted: the queue's READY jobs (due or scheduled) and its finished ones "
              "(successful, failed, cancelled), %d per statement.") % actions.BATCH,
            _("Kept: jobs a worker holds (claimed or running: cancel them), workflow "
              "steps waiting, and every job of a chain, group or chord (cancel the "
              "workflow instead)."),
        ], _("Yes, delete them"), back)
