"""How a job reads to an operator: its state (a READY job not due yet is *scheduled*),
how long it has been in that state, its last error in one line, and the timeline of its
attempts. Plain values, for the admin's pages and ``manage.py tasks`` alike, so both
say the same thing about a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..states import CANCELLED, CLAIMED, FAILED, FINISHED, READY, RUNNING, WAITING

__all__ = [
    "SCHEDULED",
    "Event",
    "age",
    "error_line",
    "short_id",
    "state",
    "state_for",
    "timeline",
]

#: The state of a READY job whose ``available_at`` is still ahead (deferred with
#: ``run_after``, or a retry waiting out its backoff): not a stored status.
SCHEDULED = "SCHEDULED"


#: At most this many task paths are offered by the admin's task filter and matched by
#: its search and ``tasks list --task`` (one index probe each).
TASK_PATHS_SHOWN = 200


def task_paths(using: str, limit: int = TASK_PATHS_SHOWN) -> list[str]:
    """The distinct task paths of the job table, in order: a loose index scan, one
    ``ORDER BY task_path LIMIT 1`` probe of the ``django_tasks_job_task`` index per path
    (tens of paths, tens of sub-millisecond look-ups) instead of a ``SELECT DISTINCT``
    that reads every row."""
    from ..models import Job

    jobs = Job.objects.using(using).order_by("task_path").values_list("task_path", flat=True)
    paths: list[str] = []
    while len(paths) < limit:
        path = (jobs.filter(task_path__gt=paths[-1]) if paths else jobs).first()
        if path is None:
            break
        paths.append(path)
    return paths



def short_id(job_id: Any) -> str:
    """The last 8 characters of a job id. Not the first 8: job ids are UUIDv7, whose
    first 8 hex digits are the enqueue time to ~65 s, the same for every job of a
    burst; the last 8 are random. ``tasks show`` takes this, or any unique start."""
    return str(job_id)[-8:]


def state(job: Any, now: datetime) -> str:
    """The job's status, or ``SCHEDULED`` for a READY job not due until later."""
    if job.status == READY and job.available_at and job.available_at > now:
        return SCHEDULED
    return job.status


def age(delta: timedelta) -> str:
    """``"3s"``, ``"4m 05s"``, ``"2h 03m"``, ``"3d 04h"``: two units at most."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def state_for(job: Any, now: datetime) -> str:
    """How long the job has been in its state, in words: ``"waiting for 3m 02s"``
    (ready and due), ``"scheduled in 59m 58s"``, ``"running for 12s"``, ``"claimed for
    1s"``, ``"waiting on 2 steps"`` (a workflow step), ``"took 0.123s"`` (finished)."""
    current = state(job, now)
    if current == SCHEDULED:
        return f"scheduled in {age(job.available_at - now)}"
    if current == READY:
        return f"waiting for {age(now - job.available_at)}"
    if current == RUNNING and job.last_attempted_at:
        return f"running for {age(now - job.last_attempted_at)}"
    if current == CLAIMED and job.last_attempted_at:
        return f"claimed for {age(now - job.last_attempted_at)}"
    if current == WAITING:
        return f"waiting on {job.waiting_on} step(s)"
    if current in FINISHED and job.duration is not None:
        return f"took {job.duration.total_seconds():.3f}s"
    return ""


def error_line(job: Any, width: int = 120) -> str:
    """The last error of a FAILED or CANCELLED job in one line, ``Class: message``
    (the class without its module), cut to ``width`` characters; "" otherwise."""
    if job.status not in (FAILED, CANCELLED) or not job.errors:
        return ""
    last = job.errors[-1]
    kind = str(last.get("exception_class_path") or "").rsplit(".", 1)[-1]
    message = " ".join(str(last.get("message") or "").split())
    text = f"{kind}: {message}" if kind and message else kind or message
    return text if len(text) <= width else text[:width - 3] + "..."


@dataclass(frozen=True)
class Event:
    """One line of a job's timeline: when, what, on which worker (or ""), and the
    traceback that goes with it (or "")."""

    at: datetime | str | None
    what: str
    worker: str = ""
    traceback: str = ""


def _when(value: Any) -> Any:
    """A time from a JSON entry (an ISO string) as a datetime; as it is if not one."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value or ""


def _order(event: Event) -> tuple[int, Any]:
    return (0, event.at.timestamp()) if isinstance(event.at, datetime) else (1, str(event.at))


def timeline(job: Any) -> list[Event]:
    """The job's life, oldest first: enqueued, each failed attempt (its worker, error
    and traceback), each retry by an operator (the last one is kept), a cancel, and
    the last attempt's start and end."""
    events = [Event(job.enqueued_at, "enqueued" + (
        f" to run after {job.run_after.isoformat()}" if job.run_after else ""))]
    failures = [e for e in (job.errors or []) if e.get("attempt")]
    for entry in failures:
        kind = str(entry.get("exception_class_path") or "")
        events.append(Event(_when(entry.get("occurred_at")),
                            f"attempt {entry.get('attempt')} failed: {kind}: "
                            f"{entry.get('message') or ''}",
                            str(entry.get("worker_id") or ""), str(entry.get("traceback") or "")))
    if isinstance(job.retried, dict):
        by = job.retried.get("by")
        events.append(Event(_when(job.retried.get("at")),
                            "retried by an operator" + (f" ({by})" if by else "")))
    if job.cancellation:
        events.append(Event(_when(job.cancellation.get("occurred_at")),
                            str(job.cancellation.get("message") or "cancel asked")))
    last_failed = bool(failures) and failures[-1].get("attempt") == job.attempts
    if job.attempts and job.last_attempted_at and not (last_failed and job.status == FAILED):
        worker = job.worker_ids[-1] if job.worker_ids else job.worker_id
        events.append(Event(job.last_attempted_at, f"attempt {job.attempts} started",
                            str(worker or "")))
    if job.status in FINISHED and job.finished_at and not last_failed:
        events.append(Event(job.finished_at, job.status.lower()))
    return sorted(events, key=_order)
