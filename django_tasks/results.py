"""Result objects returned by our backends: Django's, with ``wait()``/``get()``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django.tasks import base as django_base
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .exceptions import Cancelled, Expired, ResultTimeout, TaskFailed, UpstreamFailed
from .states import (
    CANCELLED,
    CLAIMED,
    FAILED,
    FINISHED,
    READY,
    RUNNING,
    SUCCESSFUL,
    WAITING,
    public_status,
)

__all__ = ["GroupResult", "JobError", "JobResult", "as_datetime", "error_from_dict"]

UPSTREAM_FAILED = f"{UpstreamFailed.__module__}.{UpstreamFailed.__qualname__}"
EXPIRED = f"{Expired.__module__}.{Expired.__qualname__}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobError(django_base.TaskError):
    """One failed attempt: Django's ``TaskError`` plus message, attempt, worker and time."""

    message: str = ""
    attempt: int = 0
    worker_id: str = ""
    occurred_at: datetime | None = None


def as_datetime(value: Any) -> datetime | None:
    """A stored or transported timestamp (a datetime or an ISO string) as an aware
    datetime; a naive one is UTC."""
    if value is None or (type(value) is datetime and value.tzinfo is not None):
        return value  # the common case, on the hot path: nothing to do
    if isinstance(value, datetime):
        dt = value
    else:
        dt = parse_datetime(value)
    if dt is not None and timezone.is_naive(dt):
        dt = dt.replace(tzinfo=UTC)
    return dt


def error_from_dict(data: dict[str, Any]) -> JobError:
    """The :class:`JobError` of one entry of a job's ``errors`` list."""
    return JobError(
        exception_class_path=data.get("exception_class_path", ""),
        traceback=data.get("traceback", ""),
        message=data.get("message", ""),
        attempt=data.get("attempt", 0),
        worker_id=data.get("worker_id", ""),
        occurred_at=as_datetime(data.get("occurred_at")),
    )


#: What ``refresh()`` reloads: Django's attributes and ours.
REFRESH_ATTRS = (*sorted(django_base.TASK_REFRESH_ATTRS), "progress", "job_status")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult(django_base.TaskResult):
    """Django's ``TaskResult`` for a job stored in the database.

    A cancelled job's ``status`` is FAILED (Django has no word for it) with a last error
    ``django_tasks.exceptions.Cancelled``; :attr:`is_cancelled` tells it apart.
    """

    #: The task's latest ``context.report_progress()``: ``{"current", "total",
    #: "message", "updated_at"}``, or None. Reloaded by ``refresh()``.
    progress: dict[str, Any] | None = field(default=None, compare=False)
    #: The job row's own status (Django's ``status`` has fewer words): one of
    #: ``django_tasks.states.JobStatus``.
    job_status: str = field(default="", repr=False, compare=False)

    @classmethod
    def build(cls, task: Any, *, id: str, job_status: str, args: list[Any],
              kwargs: dict[str, Any], backend: str, enqueued_at: Any = None,
              started_at: Any = None, finished_at: Any = None,
              last_attempted_at: Any = None, errors: Sequence[dict[str, Any]] = (),
              worker_ids: Sequence[str] = (), progress: dict[str, Any] | None = None,
              return_value: Any = None) -> JobResult:
        """The one way our results are made, from what a job's row (or its message) holds.

        ``job_status`` is the row's own word; Django's ``status`` is derived from it.
        Timestamps may be datetimes or ISO strings; ``errors`` are the row's error dicts.
        ``return_value`` is kept only for a SUCCESSFUL job.
        """
        result = cls(
            task=task, id=id, status=public_status(job_status),
            enqueued_at=as_datetime(enqueued_at), started_at=as_datetime(started_at),
            finished_at=as_datetime(finished_at),
            last_attempted_at=as_datetime(last_attempted_at),
            args=args, kwargs=kwargs, backend=backend,
            errors=[error_from_dict(e) for e in errors], worker_ids=list(worker_ids),
            progress=progress, job_status=job_status,
        )
        if job_status == SUCCESSFUL:
            object.__setattr__(result, "_return_value", return_value)
        return result

    def copies(self, jobs: Sequence[Any]) -> list[JobResult]:
        """This result once per job of ``jobs`` (anything with ``id``, ``args``,
        ``kwargs`` and ``enqueued_at``: a bulk enqueue's ``NewJob``), with those instead of
        its own: the results of a bulk enqueue. The job's ``args`` and ``kwargs`` are
        kept as they are, so they must be normal already (lists and dicts, as
        ``normalize_json`` makes them) and the job's own (nothing else changes them)."""
        return _copier()(object.__new__, type(self), object.__setattr__, jobs,
                         *(getattr(self, n) for n in _SHARED))

    @property
    def is_cancelled(self) -> bool:
        """Whether the job ended CANCELLED (as of the last refresh)."""
        return self.job_status == "CANCELLED"

    def refresh(self) -> None:
        """Reload the result (with ``progress``) from the job table."""
        fresh = self.task.get_backend().get_result(self.id)
        for attr in REFRESH_ATTRS:
            object.__setattr__(self, attr, getattr(fresh, attr))

    def cancel(self, *, by: str = "", terminate: bool = False) -> str:
        """Cancel the job; returns what happened (see ``JobStore.cancel``):

        ``"cancelled"`` (it had not started and never will), ``"cancelling"`` (a worker
        holds it; it ends CANCELLED as soon as the worker notices), or, changing
        nothing, ``"already cancelling"`` or ``"finished <STATUS>"``. Refreshes.
        ``terminate``: a running job is killed as soon as its worker notices (see
        :meth:`revoke`).
        """
        what = self.task.get_backend().cancel([self.id], by=by, terminate=terminate)[self.id]
        self.refresh()
        return what

    def wait(
        self, timeout: float | None = None, *, interval: float = 0.05, propagate: bool = True
    ) -> Any:
        """Block until the job has finished, then return its return value.

        Raises ``ResultTimeout`` (a ``TimeoutError``) if it has not finished within
        ``timeout`` seconds, ``Cancelled`` (a ``TaskFailed``) if it was cancelled, and
        ``TaskFailed`` if it failed (unless
        ``propagate=False``, which returns None instead). Polls the result store,
        starting at ``interval`` seconds and backing off to one second.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = interval
        while True:
            self.refresh()
            if self.is_finished:
                break
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(
                        f"Job {self.id} ({self.task.module_path}) is still {self.status} "
                        f"after {timeout} s."
                    )
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        if self.status == django_base.TaskResultStatus.SUCCESSFUL:
            return self.return_value
        if propagate and self.is_cancelled:
            last = self.errors[-1] if self.errors else None
            if last is not None and last.exception_class_path == EXPIRED:
                raise Expired(f"Job {self.id} ({self.task.module_path}) expired before it "
                              "started")
            raise Cancelled(
                f"Job {self.id} ({self.task.module_path}) was cancelled"
                + (f": {last.message}" if last is not None and last.message else "")
            )
        if propagate:
            last = self.errors[-1] if self.errors else None
            if last is not None and last.exception_class_path == UPSTREAM_FAILED:
                raise UpstreamFailed(f"Job {self.id} ({self.task.module_path}) did not run: "
                                     f"{getattr(last, 'message', '')}")
            detail = (
                f": {last.exception_class_path}: {getattr(last, 'message', '')}" if last else ""
            )
            raise TaskFailed(
                f"Job {self.id} ({self.task.module_path}) failed after "
                f"{self.attempts} attempt(s){detail}"
            )
        return None

    #: Celery's name for :meth:`wait`.
    get = wait

    # -- Celery's names (docs/coming-from-celery.md) ---------------------------------------

    @property
    def task_id(self) -> str:
        """Celery's name for :attr:`id`."""
        return self.id

    @property
    def state(self) -> str:
        """The status in Celery's words: PENDING (ready, scheduled, waiting in a
        workflow, claimed), RETRY (ready again after a failed attempt), STARTED,
        SUCCESS, FAILURE, REVOKED (cancelled). As of the last refresh."""
        if self.job_status == READY and self.errors:
            return "RETRY"
        return _CELERY_STATES.get(self.job_status, "PENDING")

    @property
    def result(self) -> Any:
        """Celery's ``result.result`` (and ``.info``): the return value of a successful
        job, the last error (a :class:`JobError`) of a failed or cancelled one, the
        progress report of a running one, else None."""
        if self.job_status == SUCCESSFUL:
            return self.return_value
        if self.job_status in (FAILED, CANCELLED):
            return self.errors[-1] if self.errors else None
        return self.progress

    info = result

    @property
    def traceback(self) -> str | None:
        """The traceback of the last failed attempt, or None."""
        return self.errors[-1].traceback if self.errors else None

    def ready(self) -> bool:
        """Whether the job has finished (Celery's ``ready()``)."""
        return self.job_status in FINISHED

    def successful(self) -> bool:
        return self.job_status == SUCCESSFUL

    def failed(self) -> bool:
        """FAILED or CANCELLED (Celery's FAILURE and REVOKED)."""
        return self.job_status in (FAILED, CANCELLED)

    def revoke(self, terminate: bool = False, signal: Any = None) -> str:
        """Celery's ``revoke()``: cancel the job (see :meth:`cancel`). With
        ``terminate=True`` a running job is killed as soon as its worker notices (the
        prefork pool; the threads pool can only ask it to stop), instead of after the
        task's ``cancel_grace``. ``signal`` is accepted and not used: the worker kills
        with SIGKILL."""
        return self.cancel(terminate=terminate)

    def forget(self) -> None:
        """Celery's ``forget()``: delete the row of this finished job (its result, errors
        and progress). A job not finished is refused with ``ValueError``: cancel it
        first."""
        self.task.get_backend().forget(self.id)


_CELERY_STATES = {READY: "PENDING", WAITING: "PENDING", CLAIMED: "PENDING",
                  RUNNING: "STARTED", SUCCESSFUL: "SUCCESS", FAILED: "FAILURE",
                  CANCELLED: "REVOKED"}


#: Every slot of a JobResult (Django's TaskResult's and ours), for :meth:`JobResult.copies`.
_SLOTS = tuple(n for klass in JobResult.__mro__ for n in getattr(klass, "__slots__", ()))


class GroupResult:
    """The results of a group's members, in member order (Celery's ``GroupResult``).

    A member that is a chain is represented by its last step's result; a nested group
    by a nested ``GroupResult``.
    """

    def __init__(self, results: list[JobResult | GroupResult], id: str = "") -> None:
        self.results = results
        self.id = id

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> JobResult | GroupResult:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<GroupResult {self.id}: {len(self.results)} result(s)>"

    def refresh(self) -> None:
        for result in self.results:
            result.refresh()

    def wait(self, timeout: float | None = None, *, interval: float = 0.05,
             propagate: bool = True) -> list[Any]:
        """Block until every member has finished; their return values in member order.

        ``timeout`` bounds the whole wait (``ResultTimeout``); a failed member raises
        ``TaskFailed`` (with ``propagate=False`` its value is None).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.wait(left, interval=interval, propagate=propagate))
        return values

    #: Celery's name for :meth:`wait`.
    get = wait
    join = wait

    def _leaves(self) -> list[JobResult]:
        out: list[JobResult] = []
        for result in self.results:
            out.extend(result._leaves() if isinstance(result, GroupResult) else [result])
        return out

    def completed_count(self) -> int:
        """How many members have succeeded (as of now)."""
        self.refresh()
        return sum(r.status == django_base.TaskResultStatus.SUCCESSFUL for r in self._leaves())

    def failed(self) -> bool:
        """Whether any member has failed."""
        self.refresh()
        return any(r.status == django_base.TaskResultStatus.FAILED for r in self._leaves())

    def successful(self) -> bool:
        """Whether every member has succeeded."""
        return self.completed_count() == len(self._leaves())

    def ready(self) -> bool:
        """Whether every member has finished (succeeded or failed)."""
        self.refresh()
        return all(r.is_finished for r in self._leaves())


#: The attributes a copy takes from the result it copies (``JobResult.copies``).
_SHARED = tuple(n for n in _SLOTS if n not in {"id", "args", "kwargs", "enqueued_at", "errors",
                                                "worker_ids"})


@cache
def _copier() -> Any:
    """``JobResult.copies``' loop, one line per attribute: the frozen dataclass is set
    with ``object.__setattr__``, and a loop over the names cost twice as much (3.8 vs
    2.9 us a result, before what the garbage collector adds)."""
    names = ", ".join(f"v_{n}" for n in _SHARED)
    lines = [f"def copies(new, cls, set_, jobs, {names}):", "    out = []",
             "    for job in jobs:", "        r = new(cls)"]
    lines += [f"        set_(r, {n!r}, v_{n})" for n in _SHARED]
    lines += ["        set_(r, 'id', job.id)", "        set_(r, 'enqueued_at', job.enqueued_at)",
              "        set_(r, 'args', job.args)", "        set_(r, 'kwargs', job.kwargs)",
              "        set_(r, 'errors', [])", "        set_(r, 'worker_ids', [])",
              "        out.append(r)", "    return out"]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # our own text, made once
    return namespace["copies"]
