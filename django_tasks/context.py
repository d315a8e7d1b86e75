"""What a task receives when it takes the context: ``TaskContext`` (ours, with progress,
cancellation and Celery's ``self.retry()``), and ``Request`` (Celery's ``self.request``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NoReturn, overload

from django.tasks import base as django_base
from django.utils import timezone

from .exceptions import MaxRetriesExceededError, Retry

__all__ = ["CANCEL_CHECK_INTERVAL", "Request", "TaskContext"]

#: ``TaskContext.is_cancelled()`` asks the database at most this often (seconds).
CANCEL_CHECK_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Request:
    """Celery's ``self.request`` in a bound task: the job being run, read-only."""

    #: The job's id (``context.job_id``).
    id: str
    #: Retries so far: 0 on the first run (``context.attempt - 1``).
    retries: int
    args: list[Any]
    kwargs: dict[str, Any]
    #: The task's name: its dotted path.
    task: str
    #: The id of the worker running the job (Celery's node name).
    hostname: str

    @property
    def worker(self) -> str:
        return self.hostname


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskContext(django_base.TaskContext):
    """What a ``takes_context=True`` (or Celery's ``bind=True``) task receives first."""

    # The claim's token: progress reports are written only while it holds the job.
    lease: str = field(default="", repr=False, compare=False)
    #: The id of the worker running this attempt.
    worker_id: str = ""
    #: The job's ``max_attempts`` (0: unknown, the task's applies).
    max_attempts: int = 0
    # retry(throw=False)'s Retry, for the worker: [Retry or None].
    _retry_pending: list[Any] = field(default_factory=lambda: [None], init=False,
                                      repr=False, compare=False)
    # is_cancelled()'s memory: [when it last asked the database, what it learned].
    _cancel_seen: list[Any] = field(default_factory=lambda: [None, False], init=False,
                                    repr=False, compare=False)

    @property
    def cancel_seen(self) -> bool:
        """Whether :meth:`is_cancelled` has returned True (no database look)."""
        return bool(self._cancel_seen[1])

    def is_cancelled(self) -> bool:
        """Whether cancelling this job was asked for: stop soon (return or raise; the job
        ends CANCELLED either way).

        Asks the database at most once per ``CANCEL_CHECK_INTERVAL`` seconds (0.5),
        on a connection apart from the task's (so the task's own open transaction
        does not hide the answer); cheap to call in a loop. Works in prefork children,
        threads and inline. Once true, stays true.
        """
        seen = self._cancel_seen
        if seen[1]:
            return True
        clock = time.monotonic()
        if seen[0] is not None and clock - seen[0] < CANCEL_CHECK_INTERVAL:
            return False
        seen[0] = clock
        store = getattr(self.task_result.task.get_backend(), "store", None)
        if store is not None:
            seen[1] = store.cancel_requested(self.task_result.id)
        return seen[1]

    @overload
    def retry(self, *, countdown: float | None = ..., exc: BaseException | None = ...,
              message: str | None = ..., eta: datetime | None = ..., max_retries: Any = ...,
              throw: Literal[True] = ...) -> NoReturn: ...

    @overload
    def retry(self, *, countdown: float | None = ..., exc: BaseException | None = ...,
              message: str | None = ..., eta: datetime | None = ..., max_retries: Any = ...,
              throw: bool) -> Retry: ...

    def retry(
        self,
        *,
        countdown: float | None = None,
        exc: BaseException | None = None,
        message: str | None = None,
        eta: datetime | None = None,
        max_retries: Any = None,
        throw: bool = True,
    ) -> Retry:
        """Raise :class:`~django_tasks.Retry`, which runs this task again.

        ``context.retry(countdown=30)`` retries in 30 s; ``eta`` (an aware datetime)
        instead sets the moment; with neither it waits the task's ``retry_delay``
        (Celery's ``default_retry_delay``), else the backoff delay. It raises by itself,
        as Celery's ``self.retry()`` does, so ``raise context.retry(...)`` and a bare
        ``context.retry(...)`` both work. Attempts still count against ``max_attempts``;
        once they are used up the job fails, with ``exc`` (when given) as its error.

        A task declared with Celery's options gets Celery's rule for the last attempt:
        with no retry left (the job's attempt is its ``max_attempts``, the numbers the
        worker decides by) this raises ``exc`` itself, or without ``exc``
        :class:`~django_tasks.MaxRetriesExceededError`, which the task may catch.

        ``throw=False`` (Celery's) returns the ``Retry`` instead of raising it, once it
        is sure to happen: the job runs again as asked whatever this attempt does next
        (its return value is dropped; an exception it raises is recorded as the
        attempt's error). With no retry left it raises, as with ``throw=True``.
        """
        if max_retries is not None:
            raise TypeError(
                f"{self.name}: retry(max_retries=...) is not supported: the limit is the "
                "task's, set with max_retries= (or max_attempts=) on @task."
            )
        if not isinstance(throw, bool):
            raise TypeError(f"{self.name}: retry(throw=...) must be True or False; "
                            f"got {throw!r}.")
        if eta is not None:
            if countdown is not None:
                raise TypeError("retry() takes countdown or eta, not both.")
            countdown = (eta - timezone.now()).total_seconds()
        retry = Retry(message, countdown=countdown, exc=exc)
        if throw and not self._celery:  # ours: the worker alone decides (as it always has)
            raise retry
        if self.attempt >= self.max_attempts_of_job:
            if not self._celery:
                raise retry  # the job fails, with exc (else Retry) as its error
            if exc is not None:
                raise exc
            result = self.task_result
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{result.id}] args:{result.args} "
                f"kwargs:{result.kwargs}: attempt {self.attempt} of max_attempts "
                f"{self.max_attempts_of_job} (max_retries={self.max_retries}) was the last.",
                task_args=result.args, task_kwargs=result.kwargs,
            )
        if throw:
            raise retry
        self._retry_pending[0] = retry
        return retry

    @property
    def retry_pending(self) -> Retry | None:
        """The ``Retry`` a ``retry(throw=False)`` returned, if any: the worker retries the
        job whatever the task does afterwards."""
        return self._retry_pending[0]

    @property
    def max_attempts_of_job(self) -> int:
        """The job's ``max_attempts``, as the worker reads it (the task's unless the job
        was retried by hand)."""
        return self.max_attempts or getattr(self.task_result.task, "max_attempts", 1)

    @property
    def _celery(self) -> bool:
        return bool(getattr(self.task_result.task, "celery", False))

    def report_progress(self, current: float, total: float | None = None,
                        message: str = "") -> None:
        """Record how far the job has got: ``result.progress`` for callers, a bar in the
        admin. Written at once on a connection of its own (autocommit), so others see
        it even while the task holds a transaction open; fenced by the claim's lease
        (a report from an attempt that lost the job changes nothing)."""
        self._report({"current": current, "total": total, "message": message})

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None, **kwargs: Any) -> None:
        """Celery's ``self.update_state(state="PROGRESS", meta={...})``: a progress report.

        ``result.progress`` becomes ``{"state": state, "meta": meta, "current",
        "total", "message", "updated_at"}``: ``state`` and ``meta`` as given (Celery's
        ``result.state`` and ``result.info``; ``meta`` must be JSON), ``current`` and
        ``total`` copied from ``meta`` when they are numbers (the admin's bar),
        ``message`` from ``meta["message"]`` if it is a string, else ``state``. The
        job's status is not changed (it stays RUNNING whatever ``state`` says). Only the
        job being run can be updated: another ``task_id`` is a ``TypeError``.
        """
        if kwargs:
            raise TypeError(f"{self.name}: update_state() got {', '.join(sorted(kwargs))}: "
                            "only task_id (this job's), state and meta are supported.")
        if task_id is not None and str(task_id) != str(self.job_id):
            raise TypeError(f"{self.name}: update_state(task_id={task_id!r}) names another "
                            "job: only the job being run can report its state.")
        if state is not None and not isinstance(state, str):
            raise TypeError(f"{self.name}: update_state(state=...) must be a string such as "
                            f"'PROGRESS', or None; got {state!r}.")
        progress: dict[str, Any] = {"current": None, "total": None, "message": state or "",
                                    "state": state, "meta": meta}
        if isinstance(meta, dict):
            for key in ("current", "total"):
                value = meta.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    progress[key] = value
            if isinstance(meta.get("message"), str):
                progress["message"] = meta["message"]
        self._report(progress)

    def _report(self, progress: dict[str, Any]) -> None:
        backend = self.task_result.task.get_backend()
        report = getattr(backend, "report_progress", None)
        if report is not None:
            report(self.task_result.id, progress, lease=self.lease)

    @property
    def job_id(self) -> str:
        """The id of the job being run (also ``context.task_result.id``)."""
        return self.task_result.id

    # -- Celery's names, for bound tasks (bind=True) ported from Celery ---------------

    @property
    def request(self) -> Request:
        """Celery's ``self.request``: id, retries (0 on the first run), args, kwargs, ..."""
        result = self.task_result
        return Request(id=result.id, retries=max(0, self.attempt - 1), args=result.args,
                       kwargs=result.kwargs, task=result.task.module_path,
                       hostname=self.worker_id)

    @property
    def name(self) -> str:
        """Celery's ``self.name``: the task's dotted path."""
        return self.task_result.task.module_path

    @property
    def max_retries(self) -> int:
        """Celery's ``self.max_retries``: the job's ``max_attempts - 1``."""
        return self.max_attempts_of_job - 1
