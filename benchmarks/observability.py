"""What metrics and tracing cost per job, off and on (docs/observability.md).

For each mode: N no-op jobs enqueued in one transaction (the enqueuing process's CPU,
``time.process_time``, per job), then one ``manage.py worker -c 2 --burst`` (prefork)
drains them (worker and PostgreSQL CPU per job, as benchmarks/cpu_per_job.py measures
them). Modes:

- ``off``: ``TASKS_TRACING=false`` and the enqueue counter of ``/metrics`` stubbed out
  in the enqueuing process: what a job cost before observability (the running totals
  are written with the statistics either way: one upsert per key a second);
- ``metrics``: the enqueue counter on, and ``/metrics`` rendered every second while
  the worker drains (its reads are the dashboard's);
- ``tracing-api``: ``opentelemetry-api`` installed, tracing on, no SDK (no-op spans);
- ``tracing-sdk``: an SDK tracer provider with a BatchSpanProcessor (exporting to
  nowhere) in the enqueuer and in every prefork child: a PRODUCER span and a header per
  enqueue, a CONSUMER span per attempt.

Each mode runs ``--repeat`` times in a row (``tracing-sdk`` last: a process keeps the
SDK provider it set); the table shows medians. Prints, asserts nothing.

    .venv/bin/python benchmarks/observability.py [--jobs 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cpu_per_job as cpu  # after the path is set
from benchmarks import throughput as tp

MODES = ("off", "metrics", "tracing-api", "tracing-sdk")


def configure(mode: str) -> None:
    """Settings and environment (inherited by the worker) for ``mode``."""
    from django.conf import settings
    from django.test.utils import override_settings

    from django_tasks.jobs.enqueued import COUNTER, EnqueuedCounter

    tracing = mode.startswith("tracing")
    os.environ["TASKS_TRACING"] = "true" if tracing else "false"
    if tracing != settings.TASKS_TRACING:
        override_settings(TASKS_TRACING=tracing).enable()  # sends setting_changed
    if mode == "tracing-sdk":
        os.environ["DJANGO_TASKS_BENCH_OTEL"] = "sdk"
        _sdk_here()
    else:
        os.environ.pop("DJANGO_TASKS_BENCH_OTEL", None)
    # The enqueue counter: stubbed out only in ``off``.
    COUNTER.add = (lambda *a: None) if mode == "off" else (  # type: ignore[method-assign]
        EnqueuedCounter.add.__get__(COUNTER))


def _sdk_here() -> None:
    """The SDK provider of bench_tasks.py, in this (the enqueuing) process."""
    from benchmarks.bench_tasks import use_sdk

    use_sdk()


def per_call(mode: str, calls: int = 20000) -> tuple[float, float, float]:
    """Microseconds per call, in this process, of what an enqueue and an attempt pay
    for observability in ``mode``: ``tracing.producer`` (the header), the CONSUMER
    wrapper around an attempt that does nothing, and counting the enqueue."""
    from django_tasks.ids import uuid7
    from django_tasks.jobs.enqueued import COUNTER
    from django_tasks.jobs.messages import Message, Outcome
    from django_tasks.models import Job
    from django_tasks.observe import tracing

    configure(mode)
    job = Job(id=uuid7(), task_path="benchmarks.bench_tasks.noop", queue_name="default",
              backend="default")
    headers = tracing.producer(job)
    message = Message(id=str(job.id), lease="l", task_path=job.task_path,
                      queue_name="default", priority=0, backend="default", args=[],
                      kwargs={}, attempt=1, max_attempts=1, worker_ids=["w"], errors=[],
                      enqueued_at=None, started_at=None, run_after=None, available_at=None,
                      headers=headers)
    outcome = Outcome(id=message.id, lease="l", status="SUCCESSFUL")
    out = []
    for call in (lambda: tracing.producer(job),
                 lambda: (tracing.consumer(message, "w", lambda: outcome)
                          if message.headers is not None or tracing.enabled() else outcome),
                 lambda: COUNTER.add("default", "default", "default", job.task_path)):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        out.append((time.perf_counter() - started) / calls * 1e6)
    COUNTER.take()
    return out[0], out[1], out[2]


def per_call_median(mode: str) -> list[float]:
    samples = [per_call(mode) for _ in range(5)]
    return [tp.median([s[k] for s in samples]) or 0.0 for k in range(3)]


def scraping(stop: threading.Event) -> None:
    """Render /metrics every second until ``stop`` (what a Prometheus scrape reads)."""
    from django.db import connection

    from django_tasks.observe.prometheus import render

    while not stop.wait(1.0):
        render()
    connection.close()


def measure(n: int, mode: str) -> tuple[float, float, float]:
    """(enqueue CPU s, worker CPU s, PostgreSQL CPU s) of n jobs in ``mode``."""
    configure(mode)
    tp.truncate()
    started = time.process_time()
    tp.enqueue_backlog(n)
    enqueue = time.process_time() - started
    worker0, pg0 = cpu.children_cpu(), cpu.postgres_cpu()
    stop = threading.Event()
    scraper = threading.Thread(target=scraping, args=(stop,)) if mode == "metrics" else None
    if scraper:
        scraper.start()
    tp.drain_run(n)
    stop.set()
    if scraper:
        scraper.join()
    time.sleep(0.5)  # the postmaster reaps the worker's backends
    return enqueue, cpu.children_cpu() - worker0, cpu.postgres_cpu() - pg0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="N jobs (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs each (default %(default)s)")
    parser.add_argument("--database-url", default=tp.DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--modes", default=",".join(MODES), help="of: %(default)s")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    tp.ensure_database(args.database_url)
    tp.setup_django(args.database_url)
    tp.use_broker("database", tp.DEFAULT_REDIS_URL)
    n = args.jobs
    runs: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    # Before any SDK provider is set (a process sets one once): the no-op API's cost.
    micro = {m: per_call_median(m) for m in modes if m != "tracing-sdk"}
    # Mode by mode (an SDK tracer provider, once set in this process, stays: the
    # ``tracing-sdk`` runs come last).
    for mode in modes:
        for i in range(1, args.repeat + 1):
            enqueue, worker, pg = measure(n, mode)
            runs[mode].append((enqueue, worker, pg))
            print(f"run {i}/{args.repeat} {mode}: enqueue {enqueue / n * 1e6:.0f} us/job, "
                  f"worker {worker / n * 1e6:.0f} us/job, PostgreSQL {pg / n * 1e6:.0f} us/job")
    tp.truncate()
    micro["tracing-sdk"] = per_call_median("tracing-sdk")
    print()
    print("Per call, in one process (the part of an enqueue and of an attempt that is "
          "observability's), medians of 5")
    tp.print_table(["mode", "enqueue: trace header", "attempt: span wrapper",
                    "enqueue: count"],
                   [[mode, *(f"{v:.2f} us" for v in micro[mode])] for mode in modes])
    print()
    print(f"CPU per job, N={n}, repeat={args.repeat}, database broker, worker -c 2 (prefork), "
          "medians")
    table = []
    for mode, values in runs.items():
        enqueue, worker, pg = (tp.median([v[k] / n * 1e6 for v in values]) for k in range(3))
        table.append([mode, f"{enqueue:.1f} us", f"{worker:.1f} us", f"{pg:.1f} us",
                      f"{enqueue + worker + pg:.1f} us"])
    tp.print_table(["mode", "enqueue", "worker", "PostgreSQL", "total"], table)


if __name__ == "__main__":
    main()
