"""OpenTelemetry traces from the enqueue to the run (docs/observability.md#tracing).

At enqueue (:func:`producer`, called by ``ModelBackend.new_job``) a PRODUCER span is
started as a child of the caller's current span and its W3C trace context
(``traceparent``, ``tracestate``) is injected into the job's ``headers`` column, through
the configured propagator. In the worker, where the task runs (the prefork child, the
thread), :func:`consumer` extracts that context and runs the task inside a CONSUMER span,
its child: every attempt is a span of its own in the enqueuer's trace (a retry carries
the same headers), and a chain's steps, all prepared by the code that started the chain,
continue its trace. Attributes follow OpenTelemetry's messaging semantic conventions
(``messaging.system``, ``messaging.operation``, ``messaging.destination.name`` = the
queue, ``messaging.message.id`` = the job id) and add ``django_tasks.task``,
``django_tasks.attempt`` and ``django_tasks.outcome``.

Off (``opentelemetry-api`` not installed, ``TASKS_TRACING = False``, or no SDK tracer
provider set): no span is made, no header is stored, and a job pays one cached check
(``opentelemetry`` is imported only if installed and tracing is not switched off).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

if TYPE_CHECKING:
    from ..jobs.messages import Message, Outcome

__all__ = ["SYSTEM", "consumer", "enabled", "flush", "producer"]

#: ``messaging.system``.
SYSTEM = "django_tasks"


@cache
def _api() -> Any:
    """``opentelemetry.trace`` and ``opentelemetry.propagate``, and the tracer provider
    types that record nothing (no SDK configured), or None if not installed."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return trace, propagate, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


@cache
def _tracer() -> Any:
    """Our tracer, got once (``get_tracer`` was a fifth of a span's cost)."""
    return _api()[0].get_tracer(SYSTEM)


@cache
def _setting() -> bool:
    return getattr(settings, "TASKS_TRACING", True) is not False


@receiver(setting_changed)
def _tracing_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKS_TRACING":
        _setting.cache_clear()


def enabled() -> bool:
    """Whether spans are made: ``opentelemetry-api`` is installed, the setting
    ``TASKS_TRACING`` (default True) is not False, and a tracer provider that records
    (the SDK's) is set. The API's no-op spans are not made at all: they cost ~30 us an
    enqueue for nothing (benchmarks/observability.py)."""
    if not _setting():
        return False
    api = _api()
    return api is not None and not isinstance(api[0].get_tracer_provider(), api[2])


def _attributes(operation: str, kind: str, job_id: str, queue: str, task: str,
                backend: str) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.operation": operation,
            "messaging.operation.type": kind, "messaging.destination.name": queue,
            "messaging.message.id": job_id, "django_tasks.task": task,
            "django_tasks.backend": backend}


def producer(job: Any, backend: str) -> dict[str, str] | None:
    """The ``headers`` of a job of ``backend`` being enqueued: the trace context of a
    PRODUCER span made for it under the caller's current span; None when tracing is off
    or nothing is recorded (no SDK)."""
    if not enabled():
        return None
    trace, propagate, _ = _api()
    with _tracer().start_as_current_span(
        f"send {job.task_path}", kind=trace.SpanKind.PRODUCER,
        attributes=_attributes("publish", "send", str(job.id), job.queue_name, job.task_path,
                               backend),
    ) as span:
        if not span.get_span_context().is_valid:
            return None
        headers: dict[str, str] = {}
        propagate.inject(headers)
    return headers or None


def consumer(message: Message, worker_id: str, run: Callable[[], Outcome]) -> Outcome:
    """``run()`` (the task's attempt) inside a CONSUMER span, the child of the context in
    ``message.headers`` (a root span without one); the outcome's status is recorded on it."""
    if not enabled():
        return run()
    trace, propagate, _ = _api()
    parent = propagate.extract(message.headers or {})
    attributes = _attributes("process", "process", message.id, message.queue_name,
                             message.task_path, message.backend)
    attributes.update({"django_tasks.attempt": message.attempt,
                       "django_tasks.worker_id": worker_id})
    with _tracer().start_as_current_span(f"process {message.task_path}", context=parent,
                                      kind=trace.SpanKind.CONSUMER, attributes=attributes,
                                      record_exception=False) as span:
        outcome = run()
        span.set_attribute("django_tasks.outcome", outcome.status)
        error = outcome.error
        if error:
            span.set_attribute("error.type", str(error.get("exception_class_path", "")))
            span.set_status(trace.Status(trace.StatusCode.ERROR,
                                         str(error.get("message", ""))[:200]))
    return outcome


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans a process still buffers (a prefork child about to exit): the
    SDK provider's ``force_flush``, if tracing was used here."""
    if _api.cache_info().currsize and _api() is not None:
        provider = _api()[0].get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            force_flush(timeout_ms)
