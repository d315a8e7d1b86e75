"""The numbers of :mod:`.numbers` in the Prometheus text format, through
``prometheus_client`` (the ``metrics`` extra). Served by :func:`django_tasks.views.metrics`
(mounted in your URLconf) and ``manage.py worker --metrics-port``; the metric names and
labels are listed in docs/observability.md.

Every number is read from the database at scrape time (:class:`TasksCollector`), so it
is the same whichever process is scraped and however many workers on however many hosts
wrote it. Counters come from the running totals (``django_tasks_total``), which only
grow: rolling the minutes up or pruning them never lowers a counter. Gauges are the
dashboard's reads (the claim, held and waiting indexes; counts stop at ``COUNT_CAP``).
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from ..histograms import BOUNDS, RUN_COLUMNS, WAIT_COLUMNS
from ..jobs.tally import ENQUEUED, RESCUED
from ..states import CANCELLED, FAILED, READY, SUCCESSFUL
from . import numbers

__all__ = ["COUNTERS", "TasksCollector", "render", "serve"]

#: Counter name (after ``django_tasks_``, before ``_total``) -> (the outcome counted, help).
COUNTERS = {
    "enqueued": (ENQUEUED, "Jobs enqueued (counted once their transaction committed)."),
    "succeeded": (SUCCESSFUL, "Attempts that ended SUCCESSFUL."),
    "failed": (FAILED, "Attempts that ended FAILED for good."),
    "retried": (READY, "Attempts that failed and were scheduled to run again."),
    "cancelled": (CANCELLED, "Jobs that ended CANCELLED (before or while running)."),
    "rescued": (RESCUED, "Started attempts of lost workers' jobs, ended by a rescue "
                         "(also counted as retried or failed)."),
}
#: The outcomes whose rows count attempts that ran (``started`` sums their run_n).
_RAN = (SUCCESSFUL, FAILED, READY, CANCELLED)
_LE = [repr(float(b)) for b, _ in BOUNDS]


def _families() -> Any:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    return CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class TasksCollector:
    """A ``prometheus_client`` collector reading every metric from the database when
    collected (register it in a ``CollectorRegistry(auto_describe=False)``: nothing is
    read at registration)."""

    def collect(self) -> Iterator[Any]:
        counter, gauge, histogram = _families()
        backends = numbers.our_backends()
        if not backends:
            return
        now = backends[0].store.now()  # the database's clock, as workers judge liveness
        task_labels = ["backend", "queue", "task"]
        totals = numbers.totals(backends)
        for name, (outcome, text) in COUNTERS.items():
            family = counter(f"django_tasks_{name}", text, labels=task_labels)
            for row in totals:
                if row["outcome"] == outcome:
                    family.add_metric([row["backend"], row["queue_name"], row["task_path"]],
                                      row["n"])
            yield family
        started = counter("django_tasks_started", "Attempts started, counted when their "
                          "outcome is written (as the run-time histogram).", labels=task_labels)
        sums: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for row in totals:
            if row["outcome"] in _RAN:
                key = (row["backend"], row["queue_name"], row["task_path"])
                for column in ("run_n", "run_us", "wait_n", "wait_us", *RUN_COLUMNS,
                               *WAIT_COLUMNS):
                    sums[key][column] += row[column]
        for key, s in sums.items():
            started.add_metric(list(key), s["run_n"])
        yield started
        for prefix, name, text, columns in (
            ("run", "django_tasks_run_seconds", "Run time of attempts (in their pool slot).",
             RUN_COLUMNS),
            ("wait", "django_tasks_queue_wait_seconds", "Time in queue: from when the job "
             "was due (enqueued, or its run_after or retry time) to its attempt's start.",
             WAIT_COLUMNS),
        ):
            family = histogram(name, text, labels=task_labels)
            for key, s in sums.items():
                buckets = [(le, s[c]) for le, c in zip(_LE, columns, strict=True)]
                buckets.append(("+Inf", s[f"{prefix}_n"]))
                family.add_metric(list(key), buckets, sum_value=s[f"{prefix}_us"] / 1e6)
            yield family
        yield from self._gauges(backends, now, gauge)

    def _gauges(self, backends: list[Any], now: Any, gauge: Any) -> Iterator[Any]:
        backlogs, holding = numbers.backlogs(backends, now)
        queue_labels = ["backend", "queue"]
        for attribute, name, text in (
            ("ready", "ready", "READY jobs due now (stops at COUNT_CAP, 10,000)."),
            ("scheduled", "scheduled", "READY jobs not due yet: deferred, or a retry "
             "waiting out its backoff (stops at 10,000)."),
            ("claimed", "claimed", "Jobs claimed by a worker, not started yet."),
            ("running", "running", "Jobs running."),
            ("waiting", "waiting", "Workflow steps waiting for their inputs (stops at "
             "10,000)."),
        ):
            family = gauge(f"django_tasks_{name}_jobs", text, labels=queue_labels)
            for row in backlogs:
                value = getattr(row, attribute)
                family.add_metric([row.backend, row.queue], getattr(value, "n", value))
            yield family
        capped = gauge("django_tasks_counts_capped", "1 if a count of this queue stopped "
                       "at COUNT_CAP (there are more).", labels=queue_labels)
        oldest = gauge("django_tasks_oldest_ready_age_seconds", "How long the oldest READY "
                       "job that is due has waited (0 if none).", labels=queue_labels)
        for row in backlogs:
            more = row.ready.more or row.scheduled.more or row.waiting.more
            capped.add_metric([row.backend, row.queue], int(more))
            age = row.oldest_age(now)
            oldest.add_metric([row.backend, row.queue], age.total_seconds() if age else 0.0)
        yield capped
        yield oldest
        workers = numbers.worker_counts(backends, now, holding)
        for attribute, name, text in (
            ("alive", "workers_alive", "Workers whose heartbeat is within WORKER_TIMEOUT."),
            ("dead", "workers_dead", "Workers not stopped but silent past WORKER_TIMEOUT "
             "(their jobs are about to be rescued)."),
            ("slots", "worker_slots", "Slots (concurrency) of the live workers."),
            ("busy", "worker_busy_slots", "Slots running a job."),
            ("outages", "broker_outages", "Broker or database outages the live workers "
             "have ridden out since they started."),
            ("in_outage", "workers_in_outage", "Live workers in a broker outage (as of "
             "their last heartbeat)."),
        ):
            family = gauge(f"django_tasks_{name}", text, labels=["backend"])
            for w in workers:
                family.add_metric([w.backend], getattr(w, attribute))
            yield family


def render() -> tuple[bytes, str]:
    """Every metric, now, in the Prometheus text format, and its content type. Raises
    ImportError if ``prometheus_client`` is not installed."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TasksCollector())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThreadCollector(TasksCollector):
    """The collector of ``worker --metrics-port``'s thread: its database connections are
    its own, closed when unusable as Django does around a request."""

    def collect(self) -> Iterator[Any]:
        from django.db import close_old_connections

        close_old_connections()
        try:
            yield from super().collect()
        finally:
            close_old_connections()


#: The answer to a scrape without ``TASKS_METRICS_TOKEN``'s bearer token (401), from the
#: view and from ``worker --metrics-port``: its body and its challenge.
REFUSED = "A bearer token is required (TASKS_METRICS_TOKEN).\n"
CHALLENGE = 'Bearer realm="django_tasks metrics"'


def token_refused(authorization: str) -> bool:
    """Whether the setting ``TASKS_METRICS_TOKEN`` is set and ``authorization`` (a
    request's Authorization header) is not ``Bearer <that token>``."""
    from django.conf import settings

    token = getattr(settings, "TASKS_METRICS_TOKEN", None)
    return bool(token) and not hmac.compare_digest(authorization.encode(),
                                                   f"Bearer {token}".encode())


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``port`` from a thread of this process (``worker
    --metrics-port``); returns the server. With the setting ``TASKS_METRICS_TOKEN``, a
    request must carry ``Authorization: Bearer <token>`` (401 otherwise), as for the
    view. Raises ImportError without ``prometheus_client``."""
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ThreadCollector())  # type: ignore[arg-type]
    app = make_wsgi_app(registry)

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if token_refused(environ.get("HTTP_AUTHORIZATION", "")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", CHALLENGE)])
            return [REFUSED.encode()]
        return app(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    server = make_server(addr, port, guarded, Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="django_tasks-metrics",
                     daemon=True).start()
    return server
