"""Run one claimed job in the current process or thread and describe the outcome.

This is the only place a task function is called. The outcome is a small JSON-able
dict the supervisor writes back in batches; nothing here touches the job table.
:func:`failure_outcome` is the only place a failed attempt becomes a retry or a
failure, for exceptions the task raised and for the pool's own verdicts (the child
died, the hard time limit killed it).
"""

from __future__ import annotations

import logging
import signal
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
from ..exceptions import (
    Retry,
    ReturnValueNotSerializable,
    SoftTimeLimitExceeded,
    TaskNotRegistered,
)
from ..results import JobResult
from ..retry import next_attempt_at
from ..serialization import check_return_value
from ..task import TaskContext

logger = logging.getLogger("django_tasks.worker")

__all__ = ["execute", "failure_outcome", "task_or_none"]

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


def task_or_none(path: str) -> Any:
    """The task at ``path``, or None if it cannot be resolved (then: no retries, no limits)."""
    try:
        return resolve_task(path)
    except Exception:
        return None


def _job_result(message: dict[str, Any], task: Any, now: datetime) -> JobResult:
    return JobResult(
        task=task,
        id=message["id"],
        status=TaskResultStatus.RUNNING,
        enqueued_at=as_datetime(message["enqueued_at"]),
        started_at=as_datetime(message["started_at"]),
        finished_at=None,
        last_attempted_at=now,
        args=message["args"],
        kwargs=message["kwargs"],
        backend=message["backend"],
        errors=[error_from_dict(e) for e in message["errors"]],
        worker_ids=message["worker_ids"],
    )


def _log_args(message: dict[str, Any]) -> tuple[Any, ...]:
    return (message["id"], message["task_path"], message["queue_name"], message["attempts"],
            message["max_attempts"])


def failure_outcome(
    message: dict[str, Any],
    exc: BaseException,
    worker_id: str,
    *,
    now: datetime,
    task: Any = None,
    duration: float = 0.0,
    result: JobResult | None = None,
) -> dict[str, Any]:
    """The outcome of an attempt that ended with ``exc``: a retry, or FAILED for good.

    The one place failures are decided, whether the task raised ``exc`` or the pool
    made it up (the child died, the hard time limit killed it). The task's retry
    policy applies; without ``task`` (it could not be resolved) nothing is retried.
    Logs the job's finish line; on FAILED sends ``task_finished`` (with ``result``,
    or one built from ``message``) unless ``task`` is unknown.
    """
    log_args = _log_args(message)
    attempt = message["attempts"]
    cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
    error = _error(cause, attempt, worker_id, now)
    retry_at = None
    if task is not None and not isinstance(exc, ReturnValueNotSerializable):
        retry_at = next_attempt_at(
            attempt=attempt,
            max_attempts=message["max_attempts"],
            exc=exc,
            retry_on=getattr(task, "retry_on", ()),
            backoff=getattr(task, "backoff", 1.0),
            backoff_max=getattr(task, "backoff_max", 3600.0),
            jitter=getattr(task, "jitter", True),
            now=now,
        )
    outcome: dict[str, Any] = {"id": message["id"], "return_value": None, "error": error}
    if retry_at is not None:
        outcome.update(status=READY.value, available_at=retry_at.isoformat(), finished_at=None)
        logger.warning(
            "Job %s will retry at %s: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
            log_args[0], retry_at.isoformat(), *log_args[1:], duration,
            error["exception_class_path"], error["message"],
        )
        return outcome
    outcome.update(status=FAILED.value, finished_at=now.isoformat(), available_at=None)
    logger.error(
        "Job %s FAILED: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
        *log_args, duration, error["exception_class_path"], error["message"],
    )
    if task is not None:
        if result is None:
            result = _job_result(message, task, now)
        object.__setattr__(result, "status", FAILED)
        object.__setattr__(result, "finished_at", now)
        result.errors.append(error_from_dict(error))
        _send_finished(_sender(message["backend"]), result)
    return outcome


def _raise_soft_time_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


def _call(task: Any, result: JobResult, soft_time_limit: float | None) -> Any:
    """Call the task, with SIGALRM armed to raise SoftTimeLimitExceeded inside it."""
    if not soft_time_limit:
        return _invoke(task, result)
    previous = signal.signal(signal.SIGALRM, _raise_soft_time_limit)
    signal.setitimer(signal.ITIMER_REAL, soft_time_limit)
    try:
        return _invoke(task, result)
    finally:
        # If the alarm fires right here, after the task returned, the job still
        # overran its soft limit: failing it with SoftTimeLimitExceeded is fair.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _invoke(task: Any, result: JobResult) -> Any:
    if task.takes_context:
        return task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
    return task.call(*result.args, **result.kwargs)


def execute(
    message: dict[str, Any],
    worker_id: str,
    *,
    own_connections: bool = True,
    soft_time_limits: bool = False,
) -> dict[str, Any]:
    """Run the job described by ``message``; return its outcome.

    ``own_connections``: this process/thread owns its database connections, so stale
    ones are closed around the task as Django does around a request.
    ``soft_time_limits``: enforce the task's ``soft_time_limit`` with SIGALRM. Only
    for the main thread of a process that runs nothing else (a prefork child).
    """
    started = time.monotonic()
    log_args = _log_args(message)
    logger.info("Job %s started: task=%s queue=%s attempt=%d/%d", *log_args)
    try:
        task = resolve_task(message["task_path"])
    except TaskNotRegistered as exc:
        return failure_outcome(message, exc, worker_id, now=timezone.now(),
                               duration=time.monotonic() - started)

    result = _job_result(message, task, timezone.now())
    sender = _sender(message["backend"])
    soft = getattr(task, "soft_time_limit", None) if soft_time_limits else None
    if own_connections:
        close_old_connections()
    try:
        task_started.send(sender=sender, task_result=result)
        value = _call(task, result, soft)
        check_return_value(value, task_name=message["task_path"])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return failure_outcome(message, exc, worker_id, now=timezone.now(), task=task,
                               duration=time.monotonic() - started, result=result)
    else:
        now = timezone.now()
        object.__setattr__(result, "status", SUCCESSFUL)
        object.__setattr__(result, "finished_at", now)
        object.__setattr__(result, "_return_value", value)
        logger.info(
            "Job %s SUCCESSFUL: task=%s queue=%s attempt=%d/%d duration=%.3fs",
            *log_args, time.monotonic() - started,
        )
        _send_finished(sender, result)
        return {"id": message["id"], "status": SUCCESSFUL.value, "return_value": value,
                "error": None, "finished_at": now.isoformat(), "available_at": None}
    finally:
        if own_connections:
            close_old_connections()


def _send_finished(sender: type, result: JobResult) -> None:
    # A receiver's bug must not turn a finished job into a lost outcome.
    for receiver, response in task_finished.send_robust(sender=sender, task_result=result):
        if isinstance(response, Exception):
            logger.error("task_finished receiver %r raised %r", receiver, response)

