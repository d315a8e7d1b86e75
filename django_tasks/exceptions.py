"""Exceptions raised by django_tasks.

Each class's docstring is its default message. Everything derives from
:class:`TasksError`, so ``except TasksError`` catches anything this library raises
on purpose; Django's own ``django.tasks.exceptions`` classes are used where Django
has a word for the situation (``InvalidTask``, ``TaskResultDoesNotExist``).
"""

from __future__ import annotations

from django.db import DatabaseError


class TasksError(Exception):
    """A django_tasks error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ArgumentNotSerializable(TasksError, TypeError):
    """A task argument does not survive a JSON round trip; nothing was enqueued."""


class InvalidArguments(TasksError, TypeError):
    """The arguments do not fit the task's signature; nothing was enqueued."""


class PayloadTooLarge(TasksError, ValueError):
    """The job's arguments are larger than OPTIONS["MAX_PAYLOAD"]; nothing was enqueued."""


class ReturnValueNotSerializable(TasksError, TypeError):
    """The task returned a value that is not JSON; the job failed."""


class TaskNotRegistered(TasksError):
    """The job names something that is not a task; it was not run."""


class Retry(TasksError):
    """The task asked to be retried."""

    def __init__(
        self,
        message: str | None = None,
        *,
        countdown: float | None = None,
        exc: BaseException | None = None,
    ) -> None:
        super().__init__(message or (str(exc) if exc else None))
        self.countdown = countdown
        self.exc = exc


class MaxRetriesExceededError(TasksError):
    """The task called retry() with no retries left."""

    def __init__(self, message: str | None = None, *, task_args: list | None = None,
                 task_kwargs: dict | None = None) -> None:
        super().__init__(message)
        #: The job's arguments, as Celery's ``MaxRetriesExceededError`` carries them.
        self.task_args = task_args if task_args is not None else []
        self.task_kwargs = task_kwargs if task_kwargs is not None else {}


class TaskFailed(TasksError):
    """The task failed."""


class UpstreamFailed(TaskFailed):
    """A job this workflow step waited for failed, so the step did not run."""


class Cancelled(TaskFailed):
    """The job was cancelled."""


class Expired(Cancelled):
    """The job was not started before its expiry time (Celery's ``expires``): it ends
    CANCELLED without running (Celery's REVOKED)."""


class Terminated(Cancelled):
    """The job was cancelled while it ran, and killed after its cancel_grace."""


class ResultTimeout(TasksError, TimeoutError):
    """The task did not finish in time."""


class WorkerLost(TasksError):
    """The process running the job died."""


class TimeLimitExceeded(TasksError):
    """The job ran longer than its time_limit and was killed."""


class SoftTimeLimitExceeded(TasksError):
    """The job ran longer than its soft_time_limit."""


class EnqueueError(TasksError, DatabaseError):
    """The job could not be stored; it was not enqueued."""


class NotAtomic(TasksError):
    """An atomic task wrote to a database other than its jobs' database: those writes
    could not commit together with its outcome. The job failed (not retried) and none
    of its writes were kept; see "Exactly-once effects" in docs/reliability.md."""


class WorkerIdInUse(TasksError):
    """A running worker is already registered under this id."""


class OutcomeHookFailed(TasksError):
    """An outcome hook raised: the job it was called for is failed with the hook's error."""

    def __init__(self, hook: str = "") -> None:
        super().__init__(f"outcome hook {hook} raised" if hook else self.__doc__)
        self.hook = hook
