"""What ``atomic=True`` costs a short job (docs/reliability.md, "Exactly-once effects").

N jobs enqueued in one transaction, then one ``manage.py worker -c 2 --burst``
(prefork) drains them; worker and PostgreSQL CPU per job as benchmarks/cpu_per_job.py
measures them, and the drain rate. Modes, run alternately (``--repeat`` rounds):

- ``plain``: ``bench_tasks.noop``; its outcome is written by the worker's round trip,
  batched with others (one statement on PostgreSQL);
- ``atomic``: ``bench_tasks.noop_atomic``; each attempt opens a transaction, writes
  its own outcome in it (one UPDATE), and commits, in the prefork child;
- ``plain-write``: ``bench_tasks.write_row``, one INSERT in autocommit: what a task
  whose effect is one row costs today;
- ``atomic-write``: ``bench_tasks.write_row_atomic``, the same INSERT committed with
  the outcome.

The database connection is kept between jobs (``CONN_MAX_AGE`` 600, added to the URL
unless it sets its own): with Django's default of 0 every job that touches the
database opens a connection of its own, which costs more than everything measured
here (docs/worker.md). Prints medians and every run; asserts nothing.

    .venv/bin/python benchmarks/atomic.py [--jobs 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cpu_per_job as cpu  # after the path is set
from benchmarks import throughput as tp

MODES = ("plain", "atomic", "plain-write", "atomic-write")


def measure(n: int, mode: str) -> tuple[float, float, float]:
    """(jobs/s, worker CPU s, PostgreSQL CPU s) of a drain of n jobs in ``mode``."""
    from django.db import transaction

    from benchmarks import bench_tasks as bt

    tp.truncate()
    task = {"plain": bt.noop, "atomic": bt.noop_atomic, "plain-write": bt.write_row,
            "atomic-write": bt.write_row_atomic}[mode]
    with transaction.atomic():
        task.enqueue_many([()] * n)
    worker0, pg0 = cpu.children_cpu(), cpu.postgres_cpu()
    rate, line = tp.drain_run(n)
    time.sleep(0.5)  # the postmaster reaps the worker's backends
    if rate is None:
        raise SystemExit(f"the drain failed: {line}")
    return rate, cpu.children_cpu() - worker0, cpu.postgres_cpu() - pg0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="N jobs (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default %(default)s)")
    parser.add_argument("--database-url", default=tp.DEFAULT_URL, help="default %(default)s")
    args = parser.parse_args()
    url = args.database_url
    tp.ensure_database(url.split("?")[0])
    if "conn_max_age" not in url:
        url += ("&" if "?" in url else "?") + "conn_max_age=600"
    tp.setup_django(url)
    tp.use_broker("database", tp.DEFAULT_REDIS_URL)
    from django.db import connection

    from benchmarks.bench_tasks import EFFECTS

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {EFFECTS} (id bigserial PRIMARY KEY, "
                       "at timestamptz NOT NULL)")
    n = args.jobs
    runs: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    for i in range(1, args.repeat + 1):
        for mode in MODES if i % 2 else reversed(MODES):  # alternate which goes first
            rate, worker, pg = measure(n, mode)
            runs[mode].append((rate, worker, pg))
            print(f"round {i}/{args.repeat} {mode}: {rate:,.0f} jobs/s, worker "
                  f"{worker / n * 1e6:.0f} us/job, PostgreSQL {pg / n * 1e6:.0f} us/job")
    tp.truncate()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {EFFECTS}")
    print()
    print(f"N={n}, {args.repeat} rounds, database broker, worker -c 2 (prefork), medians "
          "(every run in brackets)")
    table = []
    for mode, values in runs.items():
        rates = [v[0] for v in values]
        worker = [v[1] / n * 1e6 for v in values]
        pg = [v[2] / n * 1e6 for v in values]

        def cell(xs: list[float], unit: str) -> str:
            return (f"{tp.median(xs):,.0f} {unit} ("
                    + ", ".join(f"{x:,.0f}" for x in xs) + ")")

        table.append([mode, cell(rates, "jobs/s"), cell(worker, "us"), cell(pg, "us"),
                      f"{tp.median(worker) + tp.median(pg):,.0f} us"])
    tp.print_table(["mode", "drain", "worker CPU/job", "PostgreSQL CPU/job", "total"], table)


if __name__ == "__main__":
    main()
