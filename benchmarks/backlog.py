"""Enqueue and drain rates of the database broker on PostgreSQL next to a deep backlog.

    .venv/bin/python benchmarks/backlog.py [--jobs N] [--backlog B] [--finished F]
        [--repeat R] [--database-url URL]

Measures, each R times (median and every run printed, nothing asserted), in jobs/s:

1. empty table (truncated before each run):
   - enqueue rate: N x ``noop.enqueue()`` (queue "default") from one producer in autocommit;
   - drain rate: ``manage.py worker -c 2 --burst -Q default`` over those N, timed from the
     start of the subprocess to its exit (start-up included); all N are then checked to be
     SUCCESSFUL;
2. with a backlog: B READY jobs in queue "heavy_compute" and F finished (SUCCESSFUL) rows,
   bulk-inserted with ``INSERT ... SELECT ... FROM generate_series()`` into a truncated
   table and never ANALYZEd or VACUUMed by the script (what a worker sees right after a
   burst of enqueues; the server's autovacuum setting is printed):
   a. enqueue rate of N ``noop`` jobs into "default", as in 1;
   b. drain rate of those N with ``worker -c 2 --burst -Q default``, as in 1;
   c. drain rate of the deep queue: ``worker -c 2 -Q heavy_compute --max-tasks N`` timed
      from start to exit; N more heavy_compute rows are then checked to be SUCCESSFUL.
   The backlog is built once; after each run the "default" jobs are deleted and the
   heavy_compute jobs the run touched are reset to READY (see benchmarks/README.md).

Each backlog figure is also printed as a ratio of its median to the median of the
matching empty-table figure (2a to enqueue, 2b and 2c to drain). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import (
    drain_run,
    enqueue_run,
    ensure_database,
    fmt,
    median,
    print_table,
    setup_django,
    status_counts,
    truncate,
    uuid7_sql,
)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_tasks_backlog_bench"
TASK_PATH = "benchmarks.bench_tasks.noop"
DEEP_QUEUE = "heavy_compute"
#: worker_id of the bulk-inserted finished rows, so a reset leaves them alone.
HISTORY = "backlog-history"
BUILD_BATCH = 250_000  # rows per INSERT statement


def job_table() -> str:
    from django_tasks.models import Job

    return Job._meta.db_table


def execute(sql: str, params: Sequence[object] = ()) -> int:
    """Run one statement in autocommit; its row count."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def insert_rows(count: int, *, finished: bool) -> None:
    """Bulk-insert ``count`` noop rows, enqueued (evenly) over the past hour, oldest first,
    with UUIDv7 ids of their enqueue time, as ``enqueue()`` gives them.

    READY ones go to DEEP_QUEUE, never attempted; finished ones are SUCCESSFUL (one attempt
    of ~1 ms that returned None) and also in DEEP_QUEUE, its history.
    """
    if finished:
        status, attempts, worker_ids, worker_id = "SUCCESSFUL", 1, f'["{HISTORY}"]', HISTORY
        started = "at + interval '1 millisecond'"
        ended = "at + interval '2 milliseconds'"
    else:
        status, attempts, worker_ids, worker_id = "READY", 0, "[]", ""
        started = ended = "NULL"
    sql = (
        f"INSERT INTO {job_table()} (id, task_path, backend, queue_name, priority, status, "
        f"args, kwargs, return_value, errors, worker_ids, attempts, max_attempts, progress, "
        f"enqueued_at, run_after, available_at, started_at, last_attempted_at, finished_at, "
        f"worker_id) "
        f"SELECT {uuid7_sql('at')}, %s, 'default', %s, 0, %s, '[]'::jsonb, '{{}}'::jsonb, "
        f"NULL, '[]'::jsonb, %s::jsonb, %s, 1, NULL, at, NULL, at, {started}, {started}, "
        f"{ended}, %s "
        f"FROM (SELECT statement_timestamp() - make_interval(secs => 3600.0 * (%s - i) / %s) "
        f"AS at FROM generate_series(%s, %s) AS i) AS s"
    )
    for first in range(1, count + 1, BUILD_BATCH):
        last = min(count, first + BUILD_BATCH - 1)
        execute(sql, [TASK_PATH, DEEP_QUEUE, status, worker_ids, attempts, worker_id,
                      count, count, first, last])


def build_backlog(ready: int, finished: int) -> float:
    """Truncate, then insert the finished rows and the READY backlog; seconds taken."""
    started = time.perf_counter()
    truncate()
    insert_rows(finished, finished=True)
    insert_rows(ready, finished=False)
    return time.perf_counter() - started


def reset_backlog() -> tuple[int, int, float]:
    """Undo a run: (default-queue rows deleted, deep-queue rows made READY again, seconds)."""
    from django_tasks.models import Worker

    started = time.perf_counter()
    table = job_table()
    deleted = execute(f"DELETE FROM {table} WHERE queue_name = 'default'")
    reset = execute(
        f"UPDATE {table} SET status = 'READY', return_value = NULL, errors = '[]'::jsonb, "
        f"worker_ids = '[]'::jsonb, attempts = 0, progress = NULL, started_at = NULL, "
        f"last_attempted_at = NULL, finished_at = NULL, worker_id = '' "
        f"WHERE queue_name = %s AND status <> 'READY' AND worker_id <> %s",
        [DEEP_QUEUE, HISTORY],
    )
    execute(f"DELETE FROM {Worker._meta.db_table}")
    return deleted, reset, time.perf_counter() - started


def table_report() -> str:
    """Size and statistics state of the job table, as the workers' planner sees it."""
    from django.db import connection

    table = job_table()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_total_relation_size(%s::regclass)), c.reltuples, "
            "s.last_analyze, s.last_autoanalyze, s.last_vacuum, "
            "s.last_autovacuum, (SELECT count(*) FROM pg_stats WHERE tablename = %s) "
            "FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.oid = %s::regclass",
            [table, table, table],
        )
        size, reltuples, *times, stats = cursor.fetchone()
    names = ("analyze", "autoanalyze", "vacuum", "autovacuum")
    last = ", ".join(f"last {name} {t:%H:%M:%S}" for name, t in zip(names, times, strict=True)
                     if t is not None) or "never analyzed or vacuumed"
    return (f"{table}: {size} with indexes, pg_class.reltuples {reltuples:,.0f}, "
            f"{stats} pg_stats rows, {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="N jobs (default %(default)s)")
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="READY heavy_compute jobs (default %(default)s)")
    parser.add_argument("--finished", type=int, default=1_000_000,
                        help="finished (SUCCESSFUL) rows (default %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure (default %(default)s)"
    )
    parser.add_argument("--database-url", default=DEFAULT_URL, help="default %(default)s")
    args = parser.parse_args()
    if args.backlog < args.jobs:
        sys.exit(f"--backlog {args.backlog} is smaller than --jobs {args.jobs}")

    ensure_database(args.database_url)
    setup_django(args.database_url)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        (autovacuum,) = cursor.fetchone()

    n, r, b, f = args.jobs, args.repeat, args.backlog, args.finished
    default_counts = functools.partial(status_counts, "default")
    deep_counts = functools.partial(status_counts, DEEP_QUEUE)
    burst_default = ("--burst", "-Q", "default")
    deep_args = ("-Q", DEEP_QUEUE, "--max-tasks", str(n))
    results: dict[str, list[float | None]] = {
        key: [] for key in ("enqueue", "drain", "backlog enqueue", "backlog drain", "deep drain")
    }
    began = time.perf_counter()

    for i in range(1, r + 1):
        truncate()
        rate = enqueue_run(n)
        results["enqueue"].append(rate)
        drained, check = drain_run(n, burst_default, default_counts)
        results["drain"].append(drained)
        print(f"empty run {i}/{r}: enqueue {fmt(rate, 'jobs/s')}, drain {fmt(drained, 'jobs/s')}; "
              f"after drain: {check}", flush=True)

    print(f"building the backlog: {b:,} READY {DEEP_QUEUE} jobs + {f:,} SUCCESSFUL rows ...",
          flush=True)
    built = build_backlog(b, f)
    print(f"built in {built:.0f} s; {table_report()}", flush=True)
    print(f"no ANALYZE or VACUUM is run by this script (server autovacuum = {autovacuum}): "
          f"the workers' planner sees the table as right after the bulk insert", flush=True)

    for i in range(1, r + 1):
        if i > 1:
            deleted, reset, took = reset_backlog()
            print(f"reset: deleted {deleted:,} default rows, {reset:,} {DEEP_QUEUE} rows READY "
                  f"again ({took:.0f} s)", flush=True)
        phase = time.perf_counter()
        rate = enqueue_run(n)
        results["backlog enqueue"].append(rate)
        enqueue_s = time.perf_counter() - phase
        phase = time.perf_counter()
        drained, check = drain_run(n, burst_default, default_counts)
        results["backlog drain"].append(drained)
        drain_s = time.perf_counter() - phase
        print(f"backlog run {i}/{r}: 2a enqueue {fmt(rate, 'jobs/s')} ({enqueue_s:.1f} s), "
              f"2b drain -Q default {fmt(drained, 'jobs/s')} ({drain_s:.1f} s); "
              f"default queue after drain: {check}", flush=True)
        before = deep_counts().get("SUCCESSFUL", 0)
        phase = time.perf_counter()
        deep, check = drain_run(n, deep_args, deep_counts, before)
        results["deep drain"].append(deep)
        print(f"backlog run {i}/{r}: 2c drain -Q {DEEP_QUEUE} --max-tasks {n} "
              f"{fmt(deep, 'jobs/s')} ({time.perf_counter() - phase:.1f} s); "
              f"{DEEP_QUEUE} after drain: {check}", flush=True)
    print(f"at the end: {table_report()}")
    truncate()

    print()
    print(f"django_tasks database broker, PostgreSQL {connection.pg_version // 10000}, "
          f"{os.cpu_count()} CPU(s), N={n}, backlog {b:,} READY in {DEEP_QUEUE} + {f:,} "
          f"SUCCESSFUL, repeat={r}, worker -c 2 (prefork), autovacuum {autovacuum}, "
          f"no ANALYZE, total {time.perf_counter() - began:.0f} s")
    rows = [
        ("1. enqueue, empty table (1 producer)", "enqueue", None),
        ("1. drain -Q default --burst, empty table", "drain", None),
        ("2a. enqueue into default, backlog", "backlog enqueue", "enqueue"),
        ("2b. drain -Q default --burst, backlog", "backlog drain", "drain"),
        (f"2c. drain -Q {DEEP_QUEUE} --max-tasks {n}, backlog", "deep drain", "drain"),
    ]
    table = []
    for name, key, base in rows:
        runs, value = results[key], median(results[key])
        ratio = ""
        if base is not None:
            reference = median(results[base])
            ratio = f"{value / reference:.2f}x" if value and reference else "n/a"
        table.append((name, fmt(value, "jobs/s"), ratio,
                      ", ".join(fmt(v, "jobs/s") for v in runs)))
    print_table(("metric (worker -c 2, start-up included)", "median", "vs empty", "runs"), table)


if __name__ == "__main__":
    main()
