"""Our ``Task``: Django's task plus retries, Celery's verbs, and routing awareness.

Backends set ``task_class = django_tasks.Task``, so Django's own decorator accepts
the extra options::

    from django.tasks import task

    @task(queue_name="emails", max_attempts=5, retry_on=(ConnectionError,), backoff=2.0)
    def send_welcome_email(user_id): ...
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from inspect import isclass
from typing import TYPE_CHECKING, Any

from django.tasks import base as django_base
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from .exceptions import Retry

if TYPE_CHECKING:
    from .canvas import Signature
    from .results import JobResult

__all__ = ["CANCEL_CHECK_INTERVAL", "Task", "TaskContext"]

#: ``TaskContext.is_cancelled()`` asks the database at most this often (seconds).
CANCEL_CHECK_INTERVAL = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(django_base.Task):
    """A task with retry options. Create it with ``@task(...)``, not directly."""

    #: Total runs allowed, the first one included. 1 means no retries.
    max_attempts: int = 1
    #: Exception types that trigger a retry; empty means any ``Exception``.
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds before the first retry; doubles with each attempt.
    backoff: float = 1.0
    #: Ceiling for the backoff delay, in seconds.
    backoff_max: float = 3600.0
    #: Spread each delay over ``[d/2, d]`` so retries of a burst of failures spread out.
    jitter: bool = True
    #: Hard limit in seconds: past it the prefork pool kills the child running the job
    #: and records ``TimeLimitExceeded`` (retried like any error). Not enforced by the
    #: threads and inline pools, which can only warn.
    time_limit: float | None = None
    #: Soft limit in seconds: past it ``SoftTimeLimitExceeded`` is raised inside the task
    #: (prefork pool only) so it can clean up; must be below ``time_limit``. Uses SIGALRM
    #: in the child, so such a task must not use SIGALRM (``signal.alarm``) itself.
    soft_time_limit: float | None = None
    #: Seconds a running job asked to cancel gets to stop by itself (it sees
    #: ``context.is_cancelled()``) before the prefork pool kills it; it ends CANCELLED
    #: either way. None: never killed (then the worker's ``--cancel-grace``, if given,
    #: applies). The threads and inline pools cannot kill: there cancelling is
    #: cooperative only.
    cancel_grace: float | None = None
    # True when the queue was chosen by the call (``using``/``apply_async``): ROUTES
    # then leave it alone. Not a user option.
    queue_from_call: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        retry_on = self.retry_on
        if isclass(retry_on):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple | list) or not all(
            isclass(t) and issubclass(t, BaseException) for t in retry_on
        ):
            raise InvalidTask(
                f"{self.module_path}: retry_on must be a tuple of exception classes, "
                f"e.g. retry_on=(ConnectionError,); got {self.retry_on!r}."
            )
        object.__setattr__(self, "retry_on", tuple(retry_on))
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise InvalidTask(
                f"{self.module_path}: max_attempts must be a whole number >= 1 "
                f"(1 means no retries); got {self.max_attempts!r}."
            )
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise InvalidTask(
                    f"{self.module_path}: {name} must be a number of seconds >= 0; got {value!r}."
                )
        grace = self.cancel_grace
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float)
                                  or not math.isfinite(grace) or grace < 0):
            raise InvalidTask(
                f"{self.module_path}: cancel_grace must be a number of seconds >= 0 (0: kill "
                f"at once), or None to let the task stop by itself; got {grace!r}."
            )
        for name in ("time_limit", "soft_time_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0
            ):
                raise InvalidTask(
                    f"{self.module_path}: {name} must be a number of seconds > 0, or None for "
                    f"no limit; got {value!r}."
                )
        if (self.time_limit is not None and self.soft_time_limit is not None
                and self.soft_time_limit >= self.time_limit):
            raise InvalidTask(
                f"{self.module_path}: soft_time_limit ({self.soft_time_limit!r}) must be less "
                f"than time_limit ({self.time_limit!r}), or the job is killed before it can "
                "clean up."
            )
        # Explicit base call: zero-argument super() does not work in slots dataclasses.
        django_base.Task.__post_init__(self)

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | timedelta | None = None,
        backend: str | None = None,
    ) -> Task:
        """A copy with other defaults. ``run_after`` may also be a ``timedelta`` from now."""
        if isinstance(run_after, timedelta):
            run_after = timezone.now() + run_after
        task = django_base.Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        if queue_name is not None:
            object.__setattr__(task, "queue_from_call", True)
        return task

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step that receives the previous step's result first (Celery's
        partial signature): ``chain(add.s(2, 2), mul.s(4))``."""
        from .canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step that runs with exactly these arguments (immutable)."""
        from .canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def delay(self, *args: Any, **kwargs: Any) -> JobResult:
        """Celery's name for :meth:`enqueue`."""
        return self.enqueue(*args, **kwargs)

    def apply_async(
        self,
        args: list | tuple | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> JobResult:
        """Celery's call: enqueue with per-call options.

        ``countdown`` (seconds from now) and ``eta`` (an aware datetime) both set
        ``run_after``; give one or neither.
        """
        if countdown is not None and eta is not None:
            raise TypeError("apply_async() takes countdown or eta, not both.")
        run_after: datetime | timedelta | None = eta
        if countdown is not None:
            if not isinstance(countdown, int | float) or countdown < 0:
                raise TypeError(f"countdown must be a number of seconds >= 0; got {countdown!r}.")
            run_after = timedelta(seconds=countdown)
        task = self.using(queue_name=queue, priority=priority, run_after=run_after)
        return task.enqueue(*(args or ()), **(kwargs or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskContext(django_base.TaskContext):
    """What a ``takes_context=True`` task receives as its first argument."""

    # The claim's token: progress reports are written only while it holds the job.
    lease: str = field(default="", repr=False, compare=False)
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

    def retry(
        self,
        *,
        countdown: float | None = None,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> Retry:
        """Return the exception to raise to run this task again.

        ``raise context.retry(countdown=30)`` retries in 30 s (default: the task's
        backoff). Attempts still count against ``max_attempts``; once they are used up
        the job fails, with ``exc`` (when given) recorded as the error.
        """
        return Retry(message, countdown=countdown, exc=exc)

    def report_progress(self, current: float, total: float | None = None,
                        message: str = "") -> None:
        """Record how far the job has got: ``result.progress`` for callers, a bar in the
        admin. Written at once on a connection of its own (autocommit), so others see
        it even while the task holds a transaction open; fenced by the claim's lease
        (a report from an attempt that lost the job changes nothing)."""
        backend = self.task_result.task.get_backend()
        report = getattr(backend, "report_progress", None)
        if report is not None:
            report(self.task_result.id, {"current": current, "total": total, "message": message},
                   lease=self.lease)

    @property
    def job_id(self) -> str:
        """The id of the job being run (also ``context.task_result.id``)."""
        return self.task_result.id
