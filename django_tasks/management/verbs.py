"""``manage.py tasks`` verbs that look at and act on single jobs: ``list``, ``show``,
``retry``, ``cancel``, ``purge``. They act through ``django_tasks.jobs.actions``, the
code the admin's actions run, and print for an 80-column terminal."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, TextIO

from django.core.management.base import CommandError
from django.db.models import Q, QuerySet
from django.utils import timezone

from django_tasks.jobs import actions, summary
from django_tasks.states import FAILED, JobStatus

__all__ = ["cancel", "list_jobs", "purge", "resolve", "retry", "show"]

#: What ``tasks list --status`` takes: the stored statuses and SCHEDULED.
LIST_STATUSES = [*JobStatus.values, summary.SCHEDULED]
WIDTH = 80


def _fit(text: str, width: int) -> str:
    """``text`` in ``width`` characters, cut on the left (a task path's end says most)."""
    return text if len(text) <= width else "~" + text[-(width - 1):]


def _local(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def resolve(jobs: QuerySet[Any], text: str) -> Any:
    """The job whose id is ``text``, starts with it (dashes optional, any case: a
    primary-key range look-up), or, for 8 hex digits, ends with them (the short id the
    lists show; that look-up reads the whole table). CommandError if none or several."""
    hexa = text.strip().replace("-", "").lower()
    if not hexa or len(hexa) > 32 or any(c not in "0123456789abcdef" for c in hexa):
        raise CommandError(f"{text!r} is not a job id (or the start of one): ids are "
                           "hexadecimal UUIDs, e.g. 0190b1c4-...")
    low, high = uuid.UUID(hexa.ljust(32, "0")), uuid.UUID(hexa.ljust(32, "f"))
    found = list(jobs.filter(pk__gte=low, pk__lte=high).order_by("pk")[:3])
    if len(hexa) == 8:
        found += [j for j in jobs.filter(pk__endswith=hexa).order_by("pk")[:3]
                  if j not in found]
    if not found:
        raise CommandError(f"No job {text} in this backend.")
    if len(found) > 1:
        shown = ", ".join(str(j.pk) for j in found[:2])
        raise CommandError(f"{text} is the start of several job ids ({shown}, ...): give more "
                           "of it.")
    return found[0]


def list_jobs(out: TextIO, jobs: QuerySet[Any], *, now: datetime, status: str | None,
              queue: str | None, task: str | None, worker: str | None,
              since: timedelta | None, limit: int) -> None:
    """The newest ``limit`` jobs matching the filters, one line each (a failed job's
    error on the line below)."""
    if status == summary.SCHEDULED:
        jobs = jobs.filter(status=JobStatus.READY, available_at__gt=now)
    elif status:
        jobs = jobs.filter(status=status)
    if queue:
        jobs = jobs.filter(queue_name=queue)
    if worker:
        jobs = jobs.filter(worker_id=worker)
    if since is not None:
        jobs = jobs.filter(enqueued_at__gte=now - since)
    if task:
        # As the admin's search: an exact path, or the paths that contain it (by the
        # task index), never a LIKE over every row.
        paths = [p for p in summary.task_paths(jobs.db) if task.lower() in p.lower()]
        jobs = jobs.filter(Q(task_path=task) | Q(task_path__in=paths))
    rows = list(jobs.order_by("-enqueued_at", "-pk")[:limit + 1])
    out.write(f"{'id':<9}{'state':<11}{'queue':<10}{'task':<22}{'age':<8}detail\n")
    for job in rows[:limit]:
        state = summary.state(job, now)
        ago = summary.age(now - job.enqueued_at) if job.enqueued_at else "-"
        line = (f"{summary.short_id(job.pk):<9}{state:<11}{_fit(job.queue_name, 9):<10}"
                f"{_fit(job.task_path, 21):<22}{ago:<8}{summary.state_for(job, now)}")
        out.write(line[:WIDTH].rstrip() + "\n")
        error = summary.error_line(job, WIDTH - 4)
        if error:
            out.write(f"    {error}\n")
    if not rows:
        out.write("(no jobs match)\n")
    elif len(rows) > limit:
        out.write(f"... more match; newest {limit} shown (--limit N)\n")


def show(out: TextIO, job: Any, *, now: datetime) -> None:
    """The job as its admin page shows it: for a failed job the outcome first; the
    call, the attempt timeline with every traceback, and the workflow."""
    state = summary.state(job, now)
    out.write(f"job {job.pk}\n")
    out.write(f"  task      {job.task_path}\n")
    out.write(f"  state     {state}  {summary.state_for(job, now)}\n")
    if job.status == FAILED:
        _outcome(out, job)
    fields = [("queue", job.queue_name), ("priority", job.priority), ("backend", job.backend),
              ("attempts", f"{job.attempts}/{job.max_attempts}"),
              ("worker", job.worker_id or "-"), ("enqueued", _local(job.enqueued_at)),
              ("available", _local(job.available_at)), ("started", _local(job.started_at)),
              ("finished", _local(job.finished_at))]
    if job.unique_key:
        fields.append(("unique key", job.unique_key))
    if isinstance(job.progress, dict):
        fields.append(("progress", " ".join(
            str(job.progress.get(k)) for k in ("current", "total", "message")
            if job.progress.get(k) is not None)))
    if isinstance(job.retried, dict):
        fields.append(("retried", f"{job.retried.get('at')} by {job.retried.get('by') or '?'}"))
    if job.cancellation:
        fields.append(("cancel", str(job.cancellation.get("message") or "asked")))
    if job.workflow_id:
        fields.append(("workflow", f"{job.workflow_id} (waiting on {job.waiting_on})"))
    for name, value in fields:
        out.write(f"  {name:<10}{value}\n")
    out.write(f"  args      {_json(job.args)}\n  kwargs    {_json(job.kwargs)}\n")
    if job.status != FAILED:
        _outcome(out, job)
    out.write("timeline:\n")
    for event in summary.timeline(job):
        when = event.at if isinstance(event.at, str) else _local(event.at)
        out.write(f"  {when}  {event.what}" + (f"  on {event.worker}" if event.worker else "")
                  + "\n")
        for line in event.traceback.rstrip().splitlines():
            out.write(f"      {line}\n")


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _outcome(out: TextIO, job: Any) -> None:
    if job.status == JobStatus.SUCCESSFUL:
        out.write(f"  returned  {_json(job.return_value)}\n")
    elif job.errors and job.status in (FAILED, JobStatus.CANCELLED):
        out.write(f"  error     {summary.error_line(job, 1000)}\n")


def retry(out: TextIO, jobs: QuerySet[Any], ids: list[str], *, failed: bool, by: str) -> None:
    """Retry the jobs named (ids or unique prefixes), or with ``failed`` every FAILED
    job of ``jobs``, in batches."""
    if failed:
        done = actions.retry_failed_in(jobs, by=by)
    else:
        done = actions.retry(jobs, [resolve(jobs, i).pk for i in ids], by=by)
    out.write(f"Retried {len(done.ids)} job(s).\n")
    if done.skipped:
        out.write(f"Skipped: {done.skipped_text()}.\n")


CANCEL_WORDS = {
    "cancelled": "cancelled (it had not started; it will not run)",
    "cancelling": "cancelling (a worker holds it; it ends CANCELLED once the worker notices)",
    "already cancelling": "already being cancelled; nothing to do",
}


def cancel(out: TextIO, jobs: QuerySet[Any], ids: list[str], *, alias: str, by: str) -> None:
    """Cancel the jobs named (ids or unique prefixes); CommandError naming those that are
    not jobs of this backend, after handling the others."""
    found: list[str] = []
    unknown: list[str] = []
    for text in ids:
        try:
            found.append(str(resolve(jobs, text).pk))
        except CommandError:
            unknown.append(text)
    done = actions.cancel(jobs, found, by=by)
    for job_id in found:
        what = done.each.get(job_id, "unknown")
        if what.startswith("finished "):
            out.write(f"{job_id}: already finished ({what.split()[1]}); nothing to do\n")
        elif what in CANCEL_WORDS:
            out.write(f"{job_id}: {CANCEL_WORDS[what]}\n")
        else:
            unknown.append(job_id)
    if unknown:
        others = "" if len(unknown) == len(ids) else " (the others were handled)"
        raise CommandError(f"No job {', '.join(unknown)} in TASKS[{alias!r}]{others}.")


def purge(out: TextIO, jobs: QuerySet[Any], queue: str, *, yes: bool,
          ask: Any = None) -> None:
    """Delete ``queue``'s READY and finished jobs (``actions.purgeable``), after asking
    unless ``yes``."""
    if not yes:
        n = actions.purgeable(jobs, queue).order_by()[:10_001].count()
        count = "more than 10000" if n > 10_000 else str(n)
        out.write(f"Queue {queue}: {count} job(s) to delete (READY and finished; jobs a "
                  "worker holds and workflow jobs stay).\n")
        out.flush()
        try:
            answer = (ask or input)("Delete them? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandError("Nothing deleted (pass --yes to purge without asking).")
    deleted = actions.purge(jobs, queue)
    out.write(f"Queue {queue}: deleted {deleted['ready']} ready and {deleted['finished']} "
              "finished job(s).\n")
