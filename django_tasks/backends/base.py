"""What every django_tasks backend shares: results in Django models, validation, enqueue.

A backend here is also its broker. The worker drives it through this interface and
never asks which broker it is (``backends/database.py`` is the reference; a Redis
broker implements the same verbs, with the guarantees each docstring states):

- ``publish(fields)``: store a new job; visible to workers only once committed.
- ``exchange(worker_id, starts=, outcomes=, queues=, limit=, now=)``: one round trip
  that records starts (attempt counted), writes outcomes of held jobs, and claims up
  to ``limit`` ready jobs; ``claim``/``complete`` are its two halves.
- ``release(worker_id, ids)``: give back claimed, not started jobs, untouched.
- ``rescue(worker_id, reason, job_ids=)``: free a lost worker's jobs (claimed: back
  untouched; started: ``WorkerLost``, retried while attempts remain, else FAILED).
- ``rescue_orphans(rescuer_id, now, is_gone=)``: declare silent workers dead and
  rescue every job held by a worker that is not running.
- ``held_by(worker_id)``: ids it holds (reconciliation after a broken connection).
- ``register_worker`` / ``heartbeat`` (False once declared dead) / ``unregister_worker``.
- ``wake_source()``: a waitable that wakes idle workers, or None to poll;
  ``tune_connection()``: prepare the broker thread's own connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from django.core import checks
from django.db import DatabaseError, connections
from django.tasks import Task as DjangoTask
from django.tasks import TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from ..conf import BackendOptions
from ..exceptions import EnqueueError, TaskNotRegistered
from ..results import JobError, JobResult
from ..serialization import check_arguments
from ..states import public_status
from ..task import Task

__all__ = ["ModelBackend", "resolve_task"]


def resolve_task(path: str) -> DjangoTask:
    """The task registered under ``path``; TaskNotRegistered for anything else.

    Only objects made by ``@task`` are ever returned, so a job row naming
    ``os.system`` (or a task removed in a deploy) fails with a reason instead of
    being called.
    """
    try:
        obj = import_string(path)
    except ImportError as e:
        raise TaskNotRegistered(
            f"{path!r} cannot be imported ({e}). Was the task renamed or removed in a deploy?"
        ) from None
    if not isinstance(obj, DjangoTask):
        raise TaskNotRegistered(
            f"{path!r} is not a task: only functions decorated with @task can be run "
            f"(found a {type(obj).__name__})."
        )
    if obj.module_path != path:
        raise TaskNotRegistered(f"{path!r} is an alias of the task {obj.module_path!r}.")
    return obj


def as_datetime(value: Any) -> datetime | None:
    """A stored or transported timestamp as an aware datetime."""
    if value is None or isinstance(value, datetime):
        dt = value
    else:
        dt = parse_datetime(value)
    if dt is not None and timezone.is_naive(dt):
        dt = dt.replace(tzinfo=UTC)
    return dt


def error_from_dict(data: dict[str, Any]) -> JobError:
    return JobError(
        exception_class_path=data.get("exception_class_path", ""),
        traceback=data.get("traceback", ""),
        message=data.get("message", ""),
        attempt=data.get("attempt", 0),
        worker_id=data.get("worker_id", ""),
        occurred_at=as_datetime(data.get("occurred_at")),
    )


class ModelBackend(BaseTaskBackend):
    """Results in the ``Job`` model; subclasses carry the messages."""

    task_class = Task
    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.config = BackendOptions.parse(self.options)
        self.database = self.config.database

    # -- producing ---------------------------------------------------------------

    def queue_for(self, task: DjangoTask) -> str:
        """The queue a call goes to: the call's choice, else ROUTES, else the task's."""
        if not getattr(task, "queue_from_call", False):
            routed = self.config.route(task.module_path)
            if routed is not None:
                return routed
        return task.queue_name

    def enqueue(self, task: DjangoTask, args: Sequence[Any], kwargs: dict[str, Any]) -> JobResult:
        self.validate_task(task)
        queue_name = self.queue_for(task)
        if self.queues and queue_name not in self.queues:
            raise InvalidTask(
                f"ROUTES sends {task.module_path!r} to queue {queue_name!r}, which is not in "
                f"TASKS[{self.alias!r}]['QUEUES']."
            )
        check_arguments(task.func, args, kwargs, task_name=task.module_path)
        now = timezone.now()
        job_id = uuid.uuid4()
        fields = {
            "id": job_id,
            "task_path": task.module_path,
            "backend": self.alias,
            "queue_name": queue_name,
            "priority": task.priority,
            "args": list(args),
            "kwargs": kwargs,
            "max_attempts": getattr(task, "max_attempts", 1),
            "enqueued_at": now,
            "run_after": task.run_after,
            "available_at": task.run_after or now,
        }
        try:
            self.publish(fields)
        except DatabaseError as exc:
            # One statement (INSERT, and NOTIFY on PostgreSQL) that failed: nothing was
            # stored, unless the connection broke after the commit was sent. Inside the
            # caller's transaction, that transaction is now unusable, as with any
            # database error.
            raise EnqueueError(
                f"Could not enqueue {task.module_path}: {type(exc).__name__}: {exc}".strip()
            ) from exc
        if queue_name != task.queue_name:
            task = replace(task, queue_name=queue_name)
        result = JobResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def publish(self, fields: dict[str, Any]) -> None:
        """Store the job; it becomes claimable when the surrounding transaction commits."""
        raise NotImplementedError

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Store the latest progress report of a job (last write wins)."""
        from ..models import Job

        check_arguments(None, (), progress, task_name="progress")
        progress["updated_at"] = timezone.now().isoformat()
        Job.objects.using(self.database).filter(pk=uuid.UUID(job_id)).update(progress=progress)

    # -- results -----------------------------------------------------------------

    def get_result(self, result_id: str) -> JobResult:
        from ..models import Job

        try:
            job = Job.objects.using(self.database).get(pk=uuid.UUID(str(result_id)))
        except (ValueError, Job.DoesNotExist):
            raise TaskResultDoesNotExist(result_id) from None
        return self.result_from_job(job)

    def result_from_job(self, job: Any) -> JobResult:
        task = resolve_task(job.task_path)
        if (task.queue_name, task.priority, task.run_after, task.backend) != (
            job.queue_name, job.priority, job.run_after, job.backend
        ):
            task = replace(
                task,
                queue_name=job.queue_name,
                priority=job.priority,
                run_after=job.run_after,
                backend=job.backend,
            )
        result = JobResult(
            task=task,
            id=str(job.id),
            status=public_status(job.status),
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.last_attempted_at,
            args=job.args,
            kwargs=job.kwargs,
            backend=job.backend,
            errors=[error_from_dict(e) for e in job.errors],
            worker_ids=list(job.worker_ids),
        )
        if job.status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.return_value)
        return result

    # -- configuration -----------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = []
        where = f"TASKS[{self.alias!r}]"
        for problem in self.config.problems:
            errors.append(checks.Error(f"{where}: {problem}.", id="django_tasks.E001"))
        if self.database not in connections.settings:
            errors.append(
                checks.Error(
                    f"{where}: OPTIONS['DATABASE'] is {self.database!r}, which is not in "
                    "DATABASES.",
                    id="django_tasks.E002",
                )
            )
        for pattern, queue in self.config.routes.items():
            if self.queues and queue not in self.queues:
                errors.append(
                    checks.Error(
                        f"{where}: ROUTES sends {pattern!r} to queue {queue!r}, which is not "
                        "in QUEUES.",
                        hint=f"Add {queue!r} to QUEUES or change the route.",
                        id="django_tasks.E003",
                    )
                )
        from django.apps import apps

        if not apps.is_installed("django_tasks"):
            errors.append(
                checks.Error(
                    f"{where} uses {type(self).__name__}, which stores jobs in the "
                    "django_tasks app's models.",
                    hint="Add 'django_tasks' to INSTALLED_APPS.",
                    id="django_tasks.E004",
                )
            )
        return errors
