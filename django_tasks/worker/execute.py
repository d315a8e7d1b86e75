"""Run one claimed job in the current process or thread and describe the outcome.

This is the only place a task function is called. It takes a
:class:`~django_tasks.jobs.messages.Message` and returns an
:class:`~django_tasks.jobs.messages.Outcome`; nothing here touches the job table. Failures
are decided by :func:`django_tasks.jobs.policy.failure_outcome`, the one policy shared
with the pool's own verdicts (a dead child, a hard time limit) and with rescue.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from functools import partial
from typing import Any

from django.db import close_old_connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from django.tasks import TaskResultStatus, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from ..exceptions import (
    Cancelled,
    Retry,
    SoftTimeLimitExceeded,
    TaskNotRegistered,
    Terminated,
)
from ..jobs.messages import Message, Outcome
from ..jobs.policy import (
    failure_outcome,
    heard,
    job_result,
    log_args,
    resolve_task,
    send_finished,
    send_robust,
    success_outcome,
)
from ..observe import tracing
from ..observe.headers import running_with
from ..observe.logs import job_fields
from ..results import JobResult
from ..serialization import check_return_value
from ..task import TaskContext
from .atomic import run_atomically

logger = logging.getLogger("django_tasks.worker")

__all__ = ["connections_dropped", "execute"]


# Whether this thread (or the thread a prefork child was forked from) ever opened a
# database connection: until one did, there is none for close_old_connections() to
# look at, and asking costs ~3 us a call (Django's connections are an asgiref Local).
_opened = threading.local()


@receiver(connection_created, dispatch_uid="django_tasks.worker.execute")
def _connection_opened(**kwargs: Any) -> None:
    _opened.any = True


def connections_dropped() -> None:
    """This thread holds no connection any more (a prefork child dropped those it
    inherited from its supervisor)."""
    _opened.any = False


def _close_old_connections() -> None:
    """Django's ``close_old_connections()``, as around a request, where a connection
    was ever opened here."""
    if getattr(_opened, "any", False):
        close_old_connections()


def _raise_soft_time_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


def _call(task: Any, message: Message, context: TaskContext | None,
          soft_time_limit: float | None) -> Any:
    """Call the task, with SIGALRM armed to raise SoftTimeLimitExceeded inside it."""
    if not soft_time_limit:
        return _invoke(task, message, context)
    previous = signal.signal(signal.SIGALRM, _raise_soft_time_limit)
    signal.setitimer(signal.ITIMER_REAL, soft_time_limit)
    try:
        return _invoke(task, message, context)
    finally:
        # If the alarm fires right here, after the task returned, the job still
        # overran its soft limit: failing it with SoftTimeLimitExceeded is fair.
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _invoke(task: Any, message: Message, context: TaskContext | None) -> Any:
    if context is not None:
        return task.call(context, *message.args, **message.kwargs)
    return task.call(*message.args, **message.kwargs)


def _kept(task: Any, message: Message, value: Any) -> Any:
    """The return value to store: none with Celery's ``ignore_result`` (a workflow's
    next step needs it, so a step keeps it)."""
    if getattr(task, "ignore_result", False) and message.workflow_id is None:
        return None
    return value


def _stopped_by_itself(message: Message, worker_id: str, task: Any, result: JobResult | None,
                       started: float, how: str) -> Outcome:
    """The task saw ``context.is_cancelled()`` and then ended (``how``): the job is
    CANCELLED whatever it returned or raised (the request cannot be taken back)."""
    exc = Cancelled(f"Cancelled while running; the task stopped by itself ({how}) after "
                    "context.is_cancelled() said so.")
    return failure_outcome(message, Terminated(str(exc)), worker_id, now=timezone.now(),
                           task=task, duration=time.monotonic() - started, result=result)


def execute(
    message: Message,
    worker_id: str,
    *,
    own_connections: bool = True,
    soft_time_limits: bool = False,
) -> Outcome:
    """Run the job described by ``message``; return its outcome (:func:`_attempt`),
    inside an OpenTelemetry CONSUMER span when tracing is on
    (:mod:`django_tasks.observe.tracing`)."""
    if message.headers is None and not tracing.enabled():
        return _attempt(message, worker_id, own_connections=own_connections,
                        soft_time_limits=soft_time_limits)
    with running_with(message.headers):  # current_headers() in the task
        return tracing.consumer(message, worker_id, partial(
            _attempt, message, worker_id, own_connections=own_connections,
            soft_time_limits=soft_time_limits))


def _attempt(
    message: Message,
    worker_id: str,
    *,
    own_connections: bool = True,
    soft_time_limits: bool = False,
) -> Outcome:
    """Run the job described by ``message``; return its outcome.

    ``own_connections``: this process/thread owns its database connections, so stale
    ones are closed around the task as Django does around a request.
    ``soft_time_limits``: enforce the task's ``soft_time_limit`` with SIGALRM. Only
    for the main thread of a process that runs nothing else (a prefork child).
    """
    started = time.monotonic()
    args = log_args(message)
    if logger.isEnabledFor(logging.INFO):  # the JSON fields are built only to be logged
        logger.info("Job %s started: task=%s queue=%s attempt=%d/%d", *args,
                    extra=job_fields(message, worker_id))
    try:
        task = resolve_task(message.task_path)
    except TaskNotRegistered as exc:
        return failure_outcome(message, exc, worker_id, now=timezone.now(),
                               duration=time.monotonic() - started)

    # The TaskResult is built only for someone to see it: the task's context, or a
    # receiver of task_started or task_finished other than Django's logging ones.
    finished_heard = heard(task_finished, message.backend)
    result = None
    if task.takes_context or finished_heard or heard(task_started, message.backend):
        result = job_result(message, task, timezone.now())
    soft = getattr(task, "soft_time_limit", None) if soft_time_limits else None
    # bind=True (Celery's) too: the context is its ``self``.
    context = (TaskContext(task_result=result, lease=message.lease, worker_id=worker_id,
                           max_attempts=message.max_attempts)
               if task.takes_context else None)
    if own_connections:
        _close_old_connections()

    def run() -> Any:
        value = _call(task, message, context, soft)
        if context is not None and context.retry_pending is not None:
            raise context.retry_pending  # retry(throw=False): runs again, value dropped
        check_return_value(value, task_name=message.task_path)
        return value

    def succeeded(value: Any) -> Outcome | None:
        """The outcome an atomic run writes in its transaction (None: it stopped by
        itself after its cancel request: its writes are rolled back)."""
        if context is not None and context.cancel_seen:
            return None
        done = success_outcome(message, _kept(task, message, value), timezone.now())
        done.of(message)  # written here: the worker fills it in only once it is back
        return done

    outcome = None
    try:
        if result is not None:
            # A receiver's bug is logged; it does not fail the job it was told about.
            send_robust(task_started, message.backend, result)
        if getattr(task, "atomic", False):
            store = task_backends[message.backend].store
            value, outcome = run_atomically(store, message, worker_id, run, succeeded)
        else:
            value = run()
    except BaseException as exc:
        # Anything the task raises is its outcome, KeyboardInterrupt and SystemExit
        # included: the job fails with that exception and traceback (retried only if
        # its retry_on names the class), and the slot goes on. A real Ctrl-C never
        # lands here: workers handle SIGINT themselves and prefork children ignore it.
        if context is not None and context.cancel_seen:
            return _stopped_by_itself(message, worker_id, task, result, started,
                                      f"raised {type(exc).__name__}: {exc}")
        pending = context.retry_pending if context is not None else None
        if pending is not None and not isinstance(exc, Retry):
            # retry(throw=False), then an exception: the retry asked for still happens,
            # with what was raised as the attempt's error.
            exc = Retry(countdown=pending.countdown, exc=exc)
        return failure_outcome(message, exc, worker_id, now=timezone.now(), task=task,
                               duration=time.monotonic() - started, result=result)
    else:
        if context is not None and context.cancel_seen:
            return _stopped_by_itself(message, worker_id, task, result, started, "returned")
        now = timezone.now()
        if logger.isEnabledFor(logging.INFO):
            took = time.monotonic() - started
            logger.info("Job %s SUCCESSFUL: task=%s queue=%s attempt=%d/%d duration=%.3fs",
                        *args, took, extra=job_fields(message, worker_id, "SUCCESSFUL", took))
        if result is not None and finished_heard:
            object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "finished_at", now)
            object.__setattr__(result, "_return_value", value)
            send_finished(message.backend, result)
        return outcome or success_outcome(message, _kept(task, message, value), now)
    finally:
        if own_connections:
            _close_old_connections()
