"""Our ``Task``: Django's task plus retries, Celery's verbs, and routing awareness.

Backends set ``task_class = django_tasks.Task``, so Django's own decorator accepts
the extra options::

    from django.tasks import task

    @task(queue_name="emails", max_attempts=5, retry_on=(ConnectionError,), backoff=2.0)
    def send_welcome_email(user_id): ...

    @task(unique=True, unique_for=timedelta(minutes=10))   # see docs/calling-tasks.md
    def rebuild_report(account_id): ...
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
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

__all__ = ["Task", "TaskContext", "call_digest"]

#: Longest ``unique_key`` (the column's width).
UNIQUE_KEY_MAX = 255


def call_digest(task_path: str, args: Any, kwargs: dict[str, Any]) -> str:
    """The key of ``unique=True``: SHA-256 (hex) of the task path and the canonical JSON
    of the arguments (keys sorted, no spaces), the same in every process and release."""
    call = json.dumps([task_path, list(args), kwargs], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(call.encode()).hexdigest()


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
    #: One active job per task and arguments: while one is ready, scheduled, claimed or
    #: running, enqueueing the same call again returns it instead of a new job.
    unique: bool = False
    #: One active job per this key (shared by every task of the backend), whatever the
    #: arguments; usually set per call: ``.using(unique_key=f"invoice-{pk}")``.
    unique_key: str | None = None
    #: With ``unique``/``unique_key``: a finished job enqueued less than this long ago
    #: (a ``timedelta``, or seconds) also counts. Alone, it implies ``unique=True``.
    unique_for: timedelta | None = None
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
        self._check_unique()
        # Explicit base call: zero-argument super() does not work in slots dataclasses.
        django_base.Task.__post_init__(self)

    def _check_unique(self) -> None:
        if type(self.unique) is not bool:
            raise InvalidTask(f"{self.module_path}: unique must be True or False; got "
                              f"{self.unique!r}.")
        key = self.unique_key
        if key is not None and (not isinstance(key, str) or not key
                                or len(key) > UNIQUE_KEY_MAX):
            got = (f"a string of {len(key)} characters" if isinstance(key, str) and key
                   else f"{key!r} ({type(key).__name__})")
            raise InvalidTask(
                f"{self.module_path}: unique_key must be a non-empty string of at most "
                f"{UNIQUE_KEY_MAX} characters, e.g. unique_key=f\"invoice-{{invoice.pk}}\"; "
                f"got {got}."
            )
        window = self.unique_for
        if window is not None:
            if (isinstance(window, int | float) and not isinstance(window, bool)
                    and math.isfinite(window) and window > 0):
                window = timedelta(seconds=window)
            if not isinstance(window, timedelta) or window <= timedelta(0):
                raise InvalidTask(
                    f"{self.module_path}: unique_for must be a positive timedelta or number "
                    f"of seconds, e.g. unique_for=timedelta(minutes=10); got {window!r}."
                )
            object.__setattr__(self, "unique_for", window)
            if key is None:
                object.__setattr__(self, "unique", True)
        if self.is_unique:
            backend = self.get_backend()  # an unknown alias: Django's InvalidTaskBackend
            if not getattr(backend, "supports_unique", False):
                raise InvalidTask(
                    f"{self.module_path}: unique jobs (unique, unique_key, unique_for) need a "
                    "django_tasks backend, whose database keeps one active job per key; "
                    f"TASKS[{self.backend!r}] is {type(backend).__name__}. Use "
                    "DatabaseBackend or RedisBackend, or drop the unique options."
                )

    @property
    def is_unique(self) -> bool:
        """Whether an enqueue of this task may return an existing job."""
        return self.unique or self.unique_key is not None

    def unique_key_for(self, args: Any, kwargs: dict[str, Any]) -> str | None:
        """The key a call of this task holds while active: ``unique_key``, else with
        ``unique`` the digest of the call (:func:`call_digest`), else None."""
        if self.unique_key is not None:
            return self.unique_key
        return call_digest(self.module_path, args, kwargs) if self.unique else None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | timedelta | None = None,
        backend: str | None = None,
        unique_key: str | None = None,
        unique_for: timedelta | float | None = None,
    ) -> Task:
        """A copy with other defaults. ``run_after`` may also be a ``timedelta`` from now.

        ``unique_key`` makes the call unique by that key, ``unique_for`` adds a window
        (see the class's fields); both are checked here.
        """
        if isinstance(run_after, timedelta):
            run_after = timezone.now() + run_after
        if unique_key is not None or unique_for is not None:
            changes: dict[str, Any] = {}
            if unique_key is not None:
                changes["unique_key"] = unique_key
            if unique_for is not None:
                changes["unique_for"] = unique_for
            # Checked against the backend the copy will use.
            base = replace(self, **changes, **({"backend": backend} if backend else {}))
        else:
            base = self
        task = django_base.Task.using(
            base, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
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
        """Record how far the job has got; shown in the admin and on the job row."""
        backend = self.task_result.task.get_backend()
        report = getattr(backend, "report_progress", None)
        if report is not None:
            report(self.task_result.id, {"current": current, "total": total, "message": message},
                   lease=self.lease)

    @property
    def job_id(self) -> str:
        """The id of the job being run (also ``context.task_result.id``)."""
        return self.task_result.id
