"""The task the throughput benchmark runs: it does nothing, so only the queue is measured.

With ``DJANGO_TASKS_BENCH_OTEL=sdk`` (benchmarks/observability.py) the process that
imports it (the enqueuer; each prefork child, where spans are made) gets an OpenTelemetry
SDK tracer provider with a BatchSpanProcessor exporting to nowhere: the cost of real spans.
"""

import os

from django.tasks import task

_PROVIDER: list[object] = []


def use_sdk() -> None:
    """Install the SDK tracer provider (once per process)."""
    if _PROVIDER:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Nowhere(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Nowhere()))
    trace.set_tracer_provider(provider)
    _PROVIDER.append(provider)


if os.environ.get("DJANGO_TASKS_BENCH_OTEL") == "sdk":
    use_sdk()


@task()
def noop():
    return None


@task()
def count(values):
    """A chord body: how many results it got."""
    return len(values)


@task(atomic=True)
def noop_atomic():
    """``noop``, atomic (benchmarks/atomic.py): its outcome is written in its own
    transaction, by the process that ran it."""
    return None


#: The table the writing tasks insert into (benchmarks/atomic.py creates it).
EFFECTS = "bench_effect"


def _insert() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {EFFECTS} (at) VALUES (now())")


@task()
def write_row():
    """One INSERT, in autocommit: a plain task whose effect is one row."""
    _insert()


@task(atomic=True)
def write_row_atomic():
    """The same INSERT, committed with the job's outcome."""
    _insert()
