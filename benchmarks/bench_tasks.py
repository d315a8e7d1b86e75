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
