"""django_tasks: run Django's tasks in production.

The API is Django's own (``django.tasks``); this package adds a backend whose
``Task`` class understands retries, Celery's calling verbs and routing, and a
worker that runs the jobs. ``from django_tasks import task`` is Django's decorator.
"""

from django.tasks import TaskResultStatus

from .exceptions import (
    ArgumentNotSerializable,
    Cancelled,
    EnqueueError,
    InvalidArguments,
    MaxRetriesExceededError,
    PayloadTooLarge,
    ResultTimeout,
    Retry,
    ReturnValueNotSerializable,
    SoftTimeLimitExceeded,
    TaskFailed,
    TaskNotRegistered,
    TasksError,
    TimeLimitExceeded,
    UpstreamFailed,
    WorkerLost,
)
from .results import GroupResult, JobError, JobResult
from .task import Task, TaskContext
from .workflows.canvas import Signature, chain, chord, group, signature

# After the submodule imports: importing ``django_tasks.task`` binds the package
# attribute ``task`` to that module, which would shadow Django's decorator.
from django.tasks import task  # isort: skip

__all__ = [
    "ArgumentNotSerializable",
    "Cancelled",
    "EnqueueError",
    "GroupResult",
    "InvalidArguments",
    "JobError",
    "JobResult",
    "MaxRetriesExceededError",
    "PayloadTooLarge",
    "ResultTimeout",
    "Retry",
    "ReturnValueNotSerializable",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskResultStatus",
    "TasksError",
    "TimeLimitExceeded",
    "UpstreamFailed",
    "WorkerLost",
    "chain",
    "chord",
    "group",
    "signature",
    "task",
]
