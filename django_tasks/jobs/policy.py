"""What an attempt's end means: the one policy for every way a job can stop running.

An exception the task raised, a hard time limit, a pool child that died and a worker
that was lost (rescued by another) all become an :class:`~django_tasks.jobs.messages.Outcome`
through :func:`failure_outcome`, so ``retry_on``, backoff and ``max_attempts`` mean the
same whichever happened. Nothing here touches the job table; the store writes outcomes.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from functools import cache
from importlib import import_module
from traceback import format_exception
from typing import Any

from django.tasks import Task as DjangoTask
from django.tasks import TaskResultStatus, task_backends
from django.tasks.signals import task_finished

from ..conf import may_import
from ..exceptions import (
    NotAtomic,
    Retry,
    ReturnValueNotSerializable,
    TaskNotRegistered,
    Terminated,
)
from ..observe.logs import job_fields
from ..rates import queue_key
from ..results import JobResult, as_datetime, error_from_dict
from ..retry import next_attempt_at
from ..states import CANCELLED, FAILED, READY, RUNNING, SUCCESSFUL
from .messages import Message, Outcome

logger = logging.getLogger("django_tasks.worker")

__all__ = [
    "LoggedByWorker", "as_datetime", "error_from_dict", "failure_outcome", "job_result",
    "limit_of", "resolve_task", "send_failed", "send_finished", "success_outcome", "task_or_none",
]


def resolve_task(path: str) -> DjangoTask:
    """The task registered under ``path``; TaskNotRegistered for anything else.

    Only modules of installed apps (and of ``OPTIONS["TASK_MODULES"]``) are ever
    imported: a job row naming ``evil_mod.anything`` fails without running a line of
    ``evil_mod``. A module that raises while it is imported (a syntax error, a bad
    import) fails the job with that error as the cause, instead of the process running
    it. Only objects made by ``@task`` are ever returned, so a job row naming
    ``os.system`` (or a task removed in a deploy) fails with a reason instead of being
    called.
    """
    module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise TaskNotRegistered(f"{path!r} is not a task path (module.function).")
    if not may_import(module_name):
        raise TaskNotRegistered(
            f"{path!r} is not in an installed app, so it was not imported: workers run "
            "tasks only from INSTALLED_APPS' packages and OPTIONS['TASK_MODULES']."
        )
    try:
        module = import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if isinstance(e, ModuleNotFoundError) and (
            module_name == missing or module_name.startswith(missing + ".")
        ):
            raise TaskNotRegistered(
                f"{path!r} cannot be imported: no module {missing!r}. Was the task renamed "
                "or removed in a deploy?"
            ) from None
        raise TaskNotRegistered(_import_failed(path, module_name, e)) from e
    except (Exception, SystemExit) as e:  # whatever the module's top-level code raised
        raise TaskNotRegistered(_import_failed(path, module_name, e)) from e
    obj = getattr(module, name, None)
    if obj is None:
        raise TaskNotRegistered(
            f"{path!r} cannot be found: {module_name!r} has no {name!r}. Was the task "
            "renamed or removed in a deploy?"
        )
    if not isinstance(obj, DjangoTask):
        raise TaskNotRegistered(
            f"{path!r} is not a task: only functions decorated with @task can be run "
            f"(found a {type(obj).__name__})."
        )
    if obj.module_path != path:
        raise TaskNotRegistered(f"{path!r} is an alias of the task {obj.module_path!r}.")
    return obj


def _import_failed(path: str, module: str, exc: BaseException) -> str:
    return (f"{path!r} cannot be imported: importing {module!r} raised "
            f"{type(exc).__name__}: {exc} (its traceback follows).")


def stand_in_task(path: str, backend: str, reason: str) -> DjangoTask:
    """A task standing for ``path`` where it no longer resolves (renamed or removed in a
    deploy), so the job's result still reads: same path, calling it raises
    ``TaskNotRegistered`` with ``reason``."""
    from ..task import Task

    module, _, name = path.rpartition(".")

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        raise TaskNotRegistered(reason)

    stand_in.__module__, stand_in.__name__ = module or "unknown", name or path
    stand_in.__qualname__ = stand_in.__name__
    return Task(func=stand_in, backend=backend)


def task_or_none(path: str) -> Any:
    """The task at ``path``, or None if it cannot be resolved (then: no retries, no limits)."""
    try:
        return resolve_task(path)
    except Exception:
        return None


def storable(text: str) -> str:
    """``text`` with what no database stores (NUL, lone surrogates) backslash-escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_dict(exc: BaseException, attempt: int, worker_id: str, now: datetime) -> dict[str, Any]:
    """An attempt's error as stored in ``Job.errors``."""
    cls = type(exc)
    return {
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "message": storable(str(exc)),
        "traceback": storable("".join(format_exception(exc))),
        "attempt": attempt,
        "worker_id": worker_id,
        "occurred_at": now.isoformat(),
    }


@cache
def _sender(backend_alias: str) -> type:
    try:
        return type(task_backends[backend_alias])
    except Exception:  # the job names a backend this deploy no longer has
        return object


def job_result(message: Message, task: Any, now: datetime | None = None) -> JobResult:
    """The ``TaskResult`` of the attempt ``message`` is for, as the task and signals see it."""
    return JobResult.build(
        task, id=message.id, job_status=RUNNING, enqueued_at=message.enqueued_at,
        started_at=message.started_at, last_attempted_at=now, args=message.args,
        kwargs=message.kwargs, backend=message.backend, errors=message.errors,
        worker_ids=message.worker_ids,
    )


def log_args(message: Message) -> tuple[Any, ...]:
    return (message.id, message.task_path, message.queue_name, message.attempt,
            message.max_attempts)


def failure_outcome(
    message: Message,
    exc: BaseException,
    worker_id: str,
    *,
    now: datetime,
    task: Any = None,
    duration: float = 0.0,
    result: JobResult | None = None,
    notify: bool = True,
) -> Outcome:
    """The outcome of an attempt that ended with ``exc``: a retry, or FAILED for good.

    The one place failures are decided, whether the task raised ``exc``, the pool
    made it up (the child died, the hard time limit killed it) or a rescuer did (the
    worker was lost). The task's policy applies (``retry_on``, ``dont_retry_on``,
    backoff, ``retry_delay``, ``max_attempts``); without ``task`` (it could not be
    resolved) nothing is retried.
    Logs the job's finish line; on FAILED sends ``task_finished`` (with ``result``,
    or one built from ``message``) unless ``task`` is unknown or ``notify`` is false
    (a rescuer sends it once the outcome is written).
    """
    args = log_args(message)
    cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
    error = error_dict(cause, message.attempt, worker_id, now)
    if isinstance(exc, Terminated):
        # A job asked to cancel that the pool killed, or that stopped by itself after
        # context.is_cancelled(): never retried; the store writes it CANCELLED.
        logger.warning("Job %s CANCELLED: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s",
                       *args, duration, error["message"],
                       extra=job_fields(message, worker_id, CANCELLED, duration))
        # One class path for every cancelled job; the message says how it ended.
        error.update(traceback="", exception_class_path="django_tasks.exceptions.Cancelled")
        if task is not None and notify:
            send_failed(message, task, error, now, result)  # Django's word: FAILED
        return Outcome(id=message.id, lease=message.lease, status=CANCELLED, error=error,
                       finished_at=now.isoformat())
    retry_at = None
    # A return value that is not JSON, a write an atomic task may not make: running
    # again changes nothing.
    if task is not None and not isinstance(exc, ReturnValueNotSerializable | NotAtomic):
        retry_at = next_attempt_at(
            attempt=message.attempt,
            max_attempts=message.max_attempts,
            exc=exc,
            retry_on=getattr(task, "retry_on", ()),
            backoff=getattr(task, "backoff", 1.0),
            backoff_max=getattr(task, "backoff_max", 3600.0),
            jitter=getattr(task, "jitter", True),
            retry_delay=getattr(task, "retry_delay", None),
            dont_retry_on=getattr(task, "dont_retry_on", ()),
            now=now,
        )
    if retry_at is not None:
        logger.warning(
            "Job %s will retry at %s: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
            args[0], retry_at.isoformat(), *args[1:], duration,
            error["exception_class_path"], error["message"],
            extra=job_fields(message, worker_id, "RETRY", duration),
        )
        return Outcome(id=message.id, lease=message.lease, status=READY, error=error,
                       retry_at=retry_at.isoformat(),
                       retry_delay=max(0.0, (retry_at - now).total_seconds()))
    logger.error(
        "Job %s FAILED: task=%s queue=%s attempt=%d/%d duration=%.3fs: %s: %s",
        *args, duration, error["exception_class_path"], error["message"],
        extra=job_fields(message, worker_id, FAILED, duration),
    )
    if task is not None and notify:
        send_failed(message, task, error, now, result)
    return Outcome(id=message.id, lease=message.lease, status=FAILED, error=error,
                   finished_at=now.isoformat())


def send_failed(message: Message, task: Any, error: dict[str, Any] | None, now: datetime,
                result: JobResult | None = None) -> None:
    """Send ``task_finished`` for a job that ended FAILED with ``error``."""
    if result is None:
        result = job_result(message, task, now)
    object.__setattr__(result, "status", TaskResultStatus.FAILED)
    object.__setattr__(result, "finished_at", now)
    if error:
        result.errors.append(error_from_dict(error))
    send_finished(message.backend, result)


def success_outcome(message: Message, value: Any, now: datetime) -> Outcome:
    return Outcome(id=message.id, lease=message.lease, status=SUCCESSFUL, return_value=value,
                   finished_at=now.isoformat())


def send_finished(backend_alias: str, result: JobResult) -> None:
    """Send ``task_finished``; a receiver's bug is logged, never turned into a lost outcome."""
    send_robust(task_finished, backend_alias, result)


def heard(signal: Any, sender: str | type) -> bool:
    """Whether sending ``signal`` from ``sender`` (a backend's alias, or its class) would
    reach anyone: a receiver other than Django's own logging ones, or Django's
    ``task_enqueued`` one while its logger logs at DEBUG. (Django's start and finish
    lines are never written for this package's jobs: the worker writes its own, and
    ``LoggedByWorker`` drops Django's.)

    Asked before building a job's ``TaskResult`` for ``task_started`` and
    ``task_finished`` (with no receiver of the user's, a plain job skips both: about a
    third of a prefork child's CPU per no-op job) and before sending ``task_enqueued``
    for each job of a bulk enqueue (sending it to Django's DEBUG logger alone was a
    tenth of a 20,000-job one). Reads the live receivers as ``Signal.send`` does; if
    Django ever changes how, every signal counts as heard.
    """
    if isinstance(sender, str):
        sender = _sender(sender)
    try:
        sync, asynchronous = signal._live_receivers(sender)
    except (AttributeError, TypeError, ValueError):
        return True
    worker_lines, enqueued_line, logger = _django_receivers()
    silent = worker_lines if logger.isEnabledFor(logging.DEBUG) else enqueued_line
    return any(r not in silent for r in sync) or any(r not in silent for r in asynchronous)


@cache
def _django_receivers() -> tuple[frozenset[Any], frozenset[Any], logging.Logger]:
    """Django's logging receivers (``heard``, once per job: looked up once): its start
    and finish ones, those with its enqueue one, and its logger."""
    from django.tasks import signals

    worker_lines = frozenset({getattr(signals, "log_task_started", None),
                              getattr(signals, "log_task_finished", None)})
    return (worker_lines, worker_lines | {getattr(signals, "log_task_enqueued", None)},
            signals.logger)


def send_robust(signal: Any, backend_alias: str, result: JobResult) -> None:
    from django.tasks.signals import task_enqueued

    # The worker logs each start and finish itself (with queue, attempt and duration):
    # Django's receivers would repeat them, a failure with a second traceback.
    worker_lines = signal is not task_enqueued
    if worker_lines and not heard(signal, backend_alias):
        return
    _sending.worker_lines = worker_lines
    try:
        for receiver, response in signal.send_robust(sender=_sender(backend_alias),
                                                     task_result=result):
            if isinstance(response, Exception):
                logger.error("%s receiver %r raised %r", _signal_name(signal), receiver,
                             response)
    finally:
        _sending.worker_lines = False


_sending = threading.local()


class LoggedByWorker(logging.Filter):
    """On Django's ``django.tasks`` logger: drops its start and finish lines for the jobs
    this package's workers run, which the ``django_tasks.worker`` logger has already
    written. Other backends' lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_sending, "worker_lines", False)


def _signal_name(signal: Any) -> str:
    from django.tasks import signals

    for name in ("task_enqueued", "task_started", "task_finished"):
        if getattr(signals, name) is signal:
            return name
    return "signal"


def limit_of(backend: str, key: str) -> str:
    """The limit a rate-limit key stands for, as written (``"30/s"``): the queue's
    ``OPTIONS["RATE_LIMITS"]`` entry or the task's ``rate_limit``; ``"-"`` if neither
    says any more (a task removed in a deploy, a limit taken out of the settings). For
    the admin and ``tasks status``."""
    try:
        limits = task_backends[backend].config.rate_limits
    except Exception:  # a backend this deploy no longer has
        limits = {}
    for queue, rate in limits.items():
        if queue_key(queue) == key:
            return rate.text
    return str(getattr(task_or_none(key), "rate_limit", None) or "-")
