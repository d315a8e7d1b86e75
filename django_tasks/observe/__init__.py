"""Observability: what operators watch from outside (docs/observability.md).

- :mod:`.numbers`: the one query layer the admin dashboard, ``manage.py tasks status``
  and ``/metrics`` read (queue depths, workers, the running totals), so they never
  disagree;
- :mod:`.prometheus`: those numbers in the Prometheus text format
  (``prometheus_client``, the ``metrics`` extra), served by
  :func:`django_tasks.views.metrics` and ``worker --metrics-port``;
- :mod:`.tracing`: OpenTelemetry spans from the enqueue to the run (``opentelemetry-api``,
  the ``otel`` extra);
- :mod:`.logs`: JSON log lines (``worker --log-format json``).

Nothing here imports an optional package unless it is installed and used: with
neither installed, a job pays one cached check.
"""

from __future__ import annotations

__all__ = ["process_exiting"]


def process_exiting() -> None:
    """A process that ends without running ``atexit`` (a prefork child) hands over what
    it still holds: spans the OpenTelemetry SDK buffers, enqueue counts not added yet."""
    from ..jobs.enqueued import COUNTER
    from .tracing import flush

    COUNTER.flush_at_exit()
    try:
        flush()
    except Exception:  # an exporter's failure must not keep the child from exiting
        pass
