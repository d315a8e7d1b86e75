"""A job's ``headers``: a small JSON object stored with it at enqueue and handed to the
attempt that runs it. It carries the enqueuer's trace context
(:mod:`django_tasks.observe.tracing`) and any headers of your own::

    from django_tasks.observe.headers import current_headers, job_headers

    with job_headers(tenant="acme", request_id=request.id):
        send_welcome_email.enqueue(user.id)     # stored with the job

    @task()
    def send_welcome_email(user_id):
        tenant = current_headers().get("tenant")  # in the worker, during the attempt

Values must be JSON strings, numbers, booleans or None. Keys ``traceparent``,
``tracestate`` and ``baggage`` are the trace context's; a job without any header stores
NULL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from . import tracing

__all__ = ["current_headers", "for_job", "job_headers", "running_with"]

_ENQUEUE: ContextVar[Mapping[str, Any] | None] = ContextVar("django_tasks_job_headers",
                                                            default=None)
_RUNNING: ContextVar[Mapping[str, Any] | None] = ContextVar("django_tasks_running_headers",
                                                            default=None)


@contextmanager
def job_headers(**headers: Any) -> Iterator[None]:
    """Store ``headers`` with every job enqueued inside the block (nested blocks add
    theirs, an inner value winning)."""
    token = _ENQUEUE.set({**(_ENQUEUE.get() or {}), **headers})
    try:
        yield
    finally:
        _ENQUEUE.reset(token)


def for_job(job: Any, backend: str, *, traced: bool = True) -> dict[str, Any] | None:
    """The headers of a job of ``backend`` being prepared: yours (:func:`job_headers`),
    and the trace context when tracing is on; None when there are none. ``traced``
    False: tracing is known to be off (a bulk enqueue asks once, not per job)."""
    trace = tracing.producer(job, backend) if traced else None
    mine = _ENQUEUE.get()
    if mine is None:
        return trace
    return {**mine, **(trace or {})}


def current_headers() -> Mapping[str, Any]:
    """The headers of the job whose attempt is running here (empty outside one)."""
    return _RUNNING.get() or {}


@contextmanager
def running_with(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Make ``headers`` :func:`current_headers` for the attempt run inside."""
    token = _RUNNING.set(headers)
    try:
        yield
    finally:
        _RUNNING.reset(token)
