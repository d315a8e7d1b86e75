"""django_tasks: run Django's tasks in production.

The API is Django's own (``django.tasks``); this package adds a backend whose
``Task`` class understands retries, Celery's calling verbs and routing, and a
worker that runs the jobs. ``from django_tasks import task`` is Django's decorator.

Where things are (docs/architecture.md draws the whole map):

- enqueued: ``backends/enqueue.py`` (``ModelBackend.enqueue``, ``enqueue_many``; checks in
  ``check_call``),
  stored by ``jobs/store.py`` (``JobStore.insert``);
- claimed: ``jobs/postgresql.py`` / ``jobs/sqlite.py`` (``CLAIM_READY``, ``CLAIM_IDS``),
  run by ``JobStore.exchange``;
- run: ``worker/execute.py``, fed by ``worker/loop.py`` and ``worker/pools/``;
- completed: ``jobs/policy.py`` decides, ``jobs/store.py`` writes, and
  ``workflows/advance.py`` moves what waited for the job.
"""

from django.tasks import TaskResultStatus

from .celery import AsyncResult, shared_task
from .exceptions import (
    ArgumentNotSerializable,
    Cancelled,
    EnqueueError,
    Expired,
    InvalidArguments,
    MaxRetriesExceededError,
    NotAtomic,
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
from .task import Task, TaskContext, aenqueue_many, enqueue_many
from .workflows.canvas import Signature, chain, chord, group, signature

# After the submodule imports: importing ``django_tasks.task`` binds the package
# attribute ``task`` to that module, which would shadow Django's decorator.
from django.tasks import task  # isort: skip

__all__ = [
    "ArgumentNotSerializable",
    "AsyncResult",
    "Cancelled",
    "EnqueueError",
    "Expired",
    "GroupResult",
    "InvalidArguments",
    "JobError",
    "JobResult",
    "MaxRetriesExceededError",
    "NotAtomic",
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
    "aenqueue_many",
    "chain",
    "chord",
    "enqueue_many",
    "group",
    "shared_task",
    "signature",
    "task",
]
