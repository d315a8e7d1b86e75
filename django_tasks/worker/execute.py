"""Run one claimed job in the current process or thread and describe the outcome.

This is the only place a task function is called. The outcome is a small JSON-able
dict the supervisor writes back in batches; nothing here touches the job table.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import cache
from traceback import format_exception
from typing import Any

from django.db import close_old_connections
from django.tasks import TaskResultStatus, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from ..backends.base import as_datetime, error_from_dict, resolve_task
from ..exceptions import Retry, ReturnValueNotSerializable, TaskNotRegistered
from ..results import JobResult
from ..retry import next_attempt_at
from ..serialization import check_return_value
from ..task import TaskContext

logger = logging.getLogger("django_tasks.worker")

__all__ = ["execute"]

SUCCESSFUL = TaskResultStatus.SUCCESSFUL
FAILED = TaskResultStatus.FAILED
READY = TaskResultStatus.READY


@cache
def _sender(backend_alias: str) -> type:
    try:
        return type(task_backends[backend_alias])
    except Exception:  # the job names a backend this deploy no longer has
        return object


def _error(exc: BaseException, attempt: int, worker_id: str, now: datetime) -> dict[str, Any]:
    cls = type(exc)
    return {
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(format_exception(exc)),
        "attempt": attempt,
        "worker_id": worker_id,
        "occurred_at": now.isoformat(),
    }


def execute(message: dict[str, Any], worker_id: str, *, own_connections: bool = True) -> dict:
    """Run the job described by ``message``; return its outcome.

    ``own_connections``: this process/thread owns its database connections, so stale
    ones are closed around the task as Django does around a request.
    """
    started = time.monotonic()
    job_id = message["id"]
    path = message["task_path"]
    attempt = message["attempts"]
    max_attempts = message["max_attempts"]
    log_args = (job_id, path, message["queue_name"], attempt, max_attempts)
    logger.info("Job %s started: task=%s queue=%s attempt=%d/%d", *log_args)
    outcome: dict[str, Any] = {"id": job_id, "return_value": None, "error": None,
                               "available_at": None}
    try:
        task = resolve_task(path)
    except TaskNotRegistered as exc:
        now = timezone.now()
        outcome.update(status=FAILED.value, finished_at=now.isoformat(),
                       error=_error(exc, attempt, worker_id, now))
        logger.error("Job %s FAILED: task=%s queue=%s attempt=%d/%d: %s", *log_args, exc)
        return outcome

    result = JobResult(
        task=task,
        id=job_id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=as_datetime(message["enqueued_at"]),
        started_at=as_datetime(message["started_at"]),
        finished_at=None,
        last_attempted_at=timezone.now(),
        args=message["args"],
        kwargs=message["kwargs"],
        backend=message["backend"],
        errors=[error_from_dict(e) for e in message["errors"]],
        worker_ids=message["worker_ids"],
    )
    sender = _sender(message["backend"])
    if own_connections:
        close_old_connections()
    try:
        task_started.send(sender=sender, task_result=result)
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = task.call(*result.args, **result.kwargs)
        check_return_value(value, task_name=path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        now = timezone.now()
        cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
        error = _error(cause, attempt, worker_id, now)
        retry_at = None
        if not isinstance(exc, ReturnValueNotSerializable):
            retry_at = next_attempt_at(
                attempt=attempt,
                max_attempts=max_attempts,
                exc=exc,
                retry_on=getattr(task, "retry_on", ()),
                backoff=getattr(task, "backoff", 1.0),
                backoff_max=getattr(task, "backoff_max", 3600.0),
                jitter=getattr(task, "jitter", True),
                now=now,
            )
        outcome["error"] = error
        duration = time.monotonic() - started
        if retry_at is not None:
            outcome.update(status=READY.value, available_at=retry_at.isoformat(),
                           finished_at=None)
            logger.warning(
                "Job %s will retry at %s: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
                job_id, retry_at.isoformat(), *log_args[1:], duration,
                error["exception_class_path"], error["message"],
            )
        else:
            outcome.update(status=FAILED.value, finished_at=now.isoformat())
            object.__setattr__(result, "status", FAILED)
            object.__setattr__(result, "finished_at", now)
            result.errors.append(error_from_dict(error))
            logger.error(
                "Job %s FAILED: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
                *log_args, duration, error["exception_class_path"], error["message"],
            )
            _send_finished(sender, result)
    else:
        now = timezone.now()
        outcome.update(status=SUCCESSFUL.value, return_value=value, finished_at=now.isoformat())
        object.__setattr__(result, "status", SUCCESSFUL)
        object.__setattr__(result, "finished_at", now)
        object.__setattr__(result, "_return_value", value)
        logger.info(
            "Job %s SUCCESSFUL: task=%s queue=%s attempt=%d/%d duration=%.3fs",
            *log_args, time.monotonic() - started,
        )
        _send_finished(sender, result)
    finally:
        if own_connections:
            close_old_connections()
    return outcome


def _send_finished(sender: type, result: JobResult) -> None:
    # A receiver's bug must not turn a finished job into a lost outcome.
    for receiver, response in task_finished.send_robust(sender=sender, task_result=result):
        if isinstance(response, Exception):
            logger.error("task_finished receiver %r raised %r", receiver, response)

