"""Bulk enqueue: jobs/s of ``noop.enqueue_many()``, per broker, job rows on PostgreSQL.

    .venv/bin/python benchmarks/bulk_enqueue.py [--jobs N] [--repeat R] [--brokers ...]
        [--database-url URL] [--redis-url URL] [--rabbitmq-url URL]

For each broker, R times (runs alternate between the brokers, so a noisy phase of the
machine hits each), on a freshly truncated job table:

- **enqueue_many**: ``noop.enqueue_many([()] * N)`` in autocommit, timed to its return:
  the checks, one INSERT per batch of 1,000, the commit, and what follows the commit
  (Redis: one script call per batch, timed until Redis has answered them all;
  RabbitMQ: the publish of every id and its confirms). N / elapsed, in jobs/s;
- **Python µs/job, PostgreSQL µs/job**: CPU time per job of this process and of its
  PostgreSQL backend (``/proc``) during that run, and **jobs/s of CPU**, 10^6 / their
  sum: the rate the two would reach with a core each, whatever else the machine runs
  (the wall rate moves with the load; these move far less);
- **one by one**: for scale, N / 10 x ``noop.enqueue()`` in one transaction;
- **group of 1,000**: ``group(noop.si() for _ in range(1000)).delay()``, in ms.

Medians, every run in brackets; the rows are then counted (N READY). Nothing is
asserted. The job and worker tables of that database are truncated before each run:
point it at a database of its own (created if missing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import (
    DEFAULT_RABBITMQ_URL,
    ensure_database,
    median,
    print_table,
    setup_django,
    status_counts,
    truncate,
    use_broker,
)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bulk_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
BROKERS = ("database", "redis", "rabbitmq")


def flushed() -> None:
    """Wait until Redis answered every publish sent (its publisher does not wait)."""
    from django.tasks import default_task_backend

    getattr(default_task_backend.broker, "flush", lambda: None)()


def backend_cpu() -> float:
    """CPU seconds used so far by this connection's PostgreSQL backend (from /proc; 0
    where the server is not on this machine)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bulk_run(n: int) -> tuple[float, float, float]:
    """jobs/s, and CPU µs per job in this process and in its PostgreSQL backend."""
    from benchmarks.bench_tasks import noop

    pg = backend_cpu()
    cpu = time.process_time()
    started = time.perf_counter()
    results = noop.enqueue_many([()] * n)
    flushed()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    pg = backend_cpu() - pg
    assert len(results) == n
    return n / elapsed, cpu / n * 1e6, pg / n * 1e6


def single_run(n: int) -> float:
    from django.db import transaction

    from benchmarks.bench_tasks import noop

    started = time.perf_counter()
    with transaction.atomic():
        for _ in range(n):
            noop.enqueue()
    flushed()
    return n / (time.perf_counter() - started)


def group_run(members: int = 1000) -> float:
    from benchmarks.bench_tasks import noop
    from django_tasks import group

    started = time.perf_counter()
    group(noop.si() for _ in range(members)).delay()
    flushed()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="N (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default %(default)s)")
    parser.add_argument("--database-url", default=DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="of: %(default)s")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="default %(default)s")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL,
                        help="default %(default)s")
    options = parser.parse_args()
    brokers = [b for b in options.brokers.split(",") if b]
    ensure_database(options.database_url)
    setup_django(options.database_url)
    runs: dict[str, dict[str, list[float]]] = {
        b: {"bulk": [], "cpu": [], "pg": [], "single": [], "group": []} for b in brokers}
    for i in range(options.repeat):
        for broker in brokers:
            use_broker(broker, options.redis_url, options.rabbitmq_url)
            truncate()
            rate, cpu, pg = bulk_run(options.jobs)
            runs[broker]["bulk"].append(rate)
            runs[broker]["cpu"].append(cpu)
            runs[broker]["pg"].append(pg)
            counts = status_counts()
            if counts != {"READY": options.jobs}:
                print(f"  {broker} run {i + 1}: rows {counts}, expected {options.jobs} READY")
            truncate()
            runs[broker]["single"].append(single_run(max(1, options.jobs // 10)))
            truncate()
            runs[broker]["group"].append(group_run())
            print(f"  run {i + 1} {broker}: {runs[broker]['bulk'][-1]:,.0f} jobs/s",
                  flush=True)
    truncate()
    table = []
    for broker in brokers:
        r = runs[broker]
        table.append([
            broker,
            f"{median(r['bulk']):,.0f} [{', '.join(f'{v:,.0f}' for v in r['bulk'])}]",
            f"{median(r['cpu']):.1f}", f"{median(r['pg']):.1f}",
            f"{1e6 / (median(r['cpu']) + median(r['pg'])):,.0f}",
            f"{median(r['single']):,.0f}",
            f"{median(r['bulk']) / median(r['single']):.1f}x",
            f"{median(r['group']):,.0f} [{', '.join(f'{v:,.0f}' for v in r['group'])}]",
        ])
    print(f"\n{options.jobs:,} no-op jobs per enqueue_many, median of {options.repeat} "
          "(every run in brackets)\n")
    print_table(["broker", "enqueue_many jobs/s", "Python µs/job", "PostgreSQL µs/job",
                 "jobs/s of CPU", "one by one jobs/s", "ratio", "group of 1,000 (ms)"], table)


if __name__ == "__main__":
    main()
