"""How long each admin page takes with millions of jobs (PostgreSQL).

    .venv/bin/python benchmarks/admin_pages.py [--ready N] [--finished N] [--refill]
        [--repeat R] [--database-url URL]

Fills a database of its own (default ``django_tasks_admin_bench``, created if missing)
with N ready and N finished jobs (1,000,000 each by default) by ``INSERT ... SELECT
FROM generate_series`` in SQL, then ``VACUUM ANALYZE`` (as autovacuum would have done
on a table that size). A fill whose counts match is reused; ``--refill`` forces a new
one. The statistics table is filled afresh every time (seconds) with 7 days of minutes
in which every task of every queue finished (``STAT_ROWS`` rows: far busier than the
jobs), then rolled up as workers keep it (minutes, quarters, hours). Then it logs a
superuser in with Django's test client and prints each page's time (best of R, ms), how
many queries it ran and the slowest of them. Nothing is asserted.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.throughput import ensure_database, setup_django  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_tasks_admin_bench"
BATCH = 250_000  # rows per INSERT statement

# Jobs spread evenly over the hour before the fill, ready and finished interleaved; ids
# are UUIDv7 of the enqueue time (as ids.uuid7 makes them). Tasks: 90% noop, 9%
# send_email, 1% over five report tasks; queues round-robin; 5% of finished jobs FAILED;
# finished jobs ran on the workers bench-0 .. bench-4 in turn.
INSERT = """
INSERT INTO django_tasks_job (
    id, task_path, queue_name, status, args, kwargs, errors, worker_ids, attempts,
    enqueued_at, available_at, started_at, last_attempted_at, finished_at, worker_id,
    return_value)
SELECT
    (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'
     || substr(md5(%(kind)s || i::text), 1, 3) || '8'
     || substr(md5(%(kind)s || i::text), 4, 15))::uuid,
    CASE WHEN i %% 100 = 0 THEN 'app.tasks.report_' || (i / 100 %% 5)
         WHEN i %% 10 = 0 THEN 'app.tasks.send_email'
         ELSE 'benchmarks.bench_tasks.noop' END,
    (ARRAY['default', 'emails', 'heavy_compute'])[1 + i %% 3],
    CASE WHEN NOT %(finished)s THEN 'READY'
         WHEN i %% 20 = 7 THEN 'FAILED' ELSE 'SUCCESSFUL' END,
    '[]'::jsonb, '{}'::jsonb,
    CASE WHEN %(finished)s AND i %% 20 = 7 THEN
        '[{"attempt": 1, "worker_id": "bench", "exception_class_path": "ValueError",
           "message": "boom", "traceback": "Traceback ...", "occurred_at": "x"}]'::jsonb
         ELSE '[]'::jsonb END,
    CASE WHEN %(finished)s THEN '["bench"]'::jsonb ELSE '[]'::jsonb END,
    CASE WHEN %(finished)s THEN 1 ELSE 0 END,
    t, t,
    CASE WHEN %(finished)s THEN t + interval '1 ms' END,
    CASE WHEN %(finished)s THEN t + interval '1 ms' END,
    CASE WHEN %(finished)s THEN t + interval '2 ms' END,
    CASE WHEN %(finished)s THEN 'bench-' || (i %% 5) ELSE '' END,
    NULL
FROM (
    SELECT i, %(start)s::timestamptz + (i * %(step)s + %(shift)s) * interval '1 second' AS t
    FROM generate_series(%(first)s, %(last)s) AS i
) AS rows
"""


# The statistics: every minute of the last 7 days, for each of 3 queues x 7 tasks x
# (SUCCESSFUL, FAILED): 10 jobs, with run times and times in queue spread over the
# buckets (cumulative counts, as the store writes them).
STAT_TASKS = ["benchmarks.bench_tasks.noop", "app.tasks.send_email",
              *(f"app.tasks.report_{k}" for k in range(5))]
STAT_MINUTES = 7 * 24 * 60
STAT_ROWS = STAT_MINUTES * 3 * len(STAT_TASKS) * 2


def stat_insert() -> str:
    from django_tasks.histograms import RUN_COLUMNS, WAIT_COLUMNS

    cumulative = [min(10, 1 + k) for k in range(len(RUN_COLUMNS))]
    columns = ["minute", "backend", "queue_name", "task_path", "outcome", "n", "run_n",
               "run_us", *RUN_COLUMNS, "wait_n", "wait_us", *WAIT_COLUMNS]
    values = ["date_trunc('minute', now()) - m * interval '1 minute'", "'default'", "q", "t",
              "o", "10", "10", "150000", *map(str, cumulative), "10", "900000",
              *map(str, cumulative)]
    return (f"INSERT INTO django_tasks_minute ({', '.join(columns)}) SELECT "
            f"{', '.join(values)} FROM generate_series(0, {STAT_MINUTES - 1}) AS m, "
            "unnest(ARRAY['default', 'emails', 'heavy_compute']) AS q, "
            "unnest(%(tasks)s::text[]) AS t, unnest(ARRAY['SUCCESSFUL', 'FAILED']) AS o")


def stat_rows() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_tasks_minute")
        return cursor.fetchone()[0]


def fill_statistics() -> None:
    from django.db import connection

    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_tasks_minute")
        cursor.execute(stat_insert(), {"tasks": STAT_TASKS})
    print(f"filled {STAT_ROWS:,} statistics rows (7 days of minutes) in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    # As workers' prune duty keeps it: minutes for 2 hours, quarters for a day, then hours.
    from django.tasks import default_task_backend
    from django.utils import timezone

    from django_tasks.jobs.statistics import ROLL_UP

    began = time.perf_counter()
    store = default_task_backend.store
    periods = 0
    for age, period in ROLL_UP:
        while rolled := store.roll_up_statistics(timezone.now() - age, period):
            periods += rolled
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_tasks_minute")
    print(f"rolled {periods} periods up in {time.perf_counter() - began:.0f} s: "
          f"{stat_rows():,} rows", flush=True)


def counts() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE finished_at IS NULL), "
                       "count(*) FILTER (WHERE finished_at IS NOT NULL) FROM django_tasks_job")
        ready, finished = cursor.fetchone()
    return ready, finished


def fill(ready: int, finished: int) -> None:
    from django.db import connection
    from django.utils import timezone

    start = timezone.now() - timezone.timedelta(hours=1)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_tasks_job, django_tasks_worker")
        for kind, n, shift in (("r", ready, 0.0), ("f", finished, 0.5)):
            step = 3600.0 / max(n, 1)
            for first in range(1, n + 1, BATCH):
                cursor.execute(INSERT, {
                    "kind": kind, "finished": kind == "f", "start": start, "step": step,
                    "shift": shift * step, "first": first, "last": min(n, first + BATCH - 1)})
        for k in range(5):
            cursor.execute(
                "INSERT INTO django_tasks_worker (id, hostname, pid, backend, queues, "
                "concurrency, pool, started_at, last_heartbeat_at, process_key, stop_reason) "
                "VALUES (%s, 'bench', %s, 'default', '[\"default\"]', 2, 'prefork', now(), "
                "now(), '', '')", [f"bench-{k}", 1000 + k])
    print(f"filled {ready:,} ready + {finished:,} finished in "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_tasks_job")
    print(f"VACUUM ANALYZE in {time.perf_counter() - began:.0f} s", flush=True)


def pages() -> list[tuple[str, str, dict[str, str]]]:
    from django.db import connection
    from django.urls import reverse

    with connection.cursor() as cursor:
        # A finished job from the middle of the table (untimed).
        cursor.execute("SELECT id FROM django_tasks_job WHERE status = 'SUCCESSFUL' "
                       "AND enqueued_at > (SELECT min(enqueued_at) + interval '30 minutes' "
                       "FROM django_tasks_job) ORDER BY enqueued_at LIMIT 1")
        job_id = str(cursor.fetchone()[0])
        cursor.execute("SELECT id FROM django_tasks_job WHERE status = 'FAILED' "
                       "ORDER BY enqueued_at LIMIT 1")
        failed_id = str(cursor.fetchone()[0])
        # A unique key to search for (untimed): one job gets it.
        cursor.execute("UPDATE django_tasks_job SET unique_key = 'bench-key' WHERE id = %s",
                       [job_id])
        # One running job on bench-1, for its worker page (untimed; idempotent).
        cursor.execute("UPDATE django_tasks_job SET status = 'RUNNING', lease = 'bench', "
                       "worker_id = 'bench-1', last_attempted_at = now() WHERE id = ("
                       "SELECT id FROM django_tasks_job WHERE status = 'READY' "
                       "ORDER BY enqueued_at LIMIT 1) AND NOT EXISTS (SELECT 1 FROM "
                       "django_tasks_job WHERE status = 'RUNNING')")
    jobs = reverse("admin:django_tasks_job_changelist")
    return [
        ("job list", jobs, {}),
        ("status=FAILED", jobs, {"status__exact": "FAILED"}),
        ("status=READY", jobs, {"status__exact": "READY"}),
        ("queue=default", jobs, {"queue_name": "default"}),
        ("task=send_email", jobs, {"task_path": "app.tasks.send_email"}),
        ("backend=default", jobs, {"backend": "default"}),
        ("worker=bench-3", jobs, {"worker_id": "bench-3"}),
        ("worker=unknown", jobs, {"worker_id": "bench-none"}),
        ("FAILED+worker", jobs, {"status__exact": "FAILED", "worker_id": "bench-2"}),
        ("search exact id", jobs, {"q": job_id}),
        ("search unique key", jobs, {"q": "bench-key"}),
        ("search 'noop'", jobs, {"q": "noop"}),
        ("search 'report'", jobs, {"q": "report"}),
        ("job page", reverse("admin:django_tasks_job_change", args=[job_id]), {}),
        ("failed job page", reverse("admin:django_tasks_job_change", args=[failed_id]), {}),
        ("retry-failed confirm", reverse("admin:django_tasks_job_retry_failed"),
         {"queue_name": "emails"}),
        ("purge confirm", reverse("admin:django_tasks_job_purge"), {"queue_name": "emails"}),
        ("workers", reverse("admin:django_tasks_worker_changelist"), {}),
        ("worker page", reverse("admin:django_tasks_worker_change", args=["bench-1"]), {}),
        ("dashboard", reverse("admin:django_tasks_dashboard_changelist"), {}),
        ("dashboard refresh", reverse("admin:django_tasks_dashboard_refresh"), {}),
        ("dashboard 24 h", reverse("admin:django_tasks_dashboard_changelist"),
         {"range": "24h"}),
        ("dashboard 7 d", reverse("admin:django_tasks_dashboard_changelist"), {"range": "7d"}),
        ("dashboard a task", reverse("admin:django_tasks_dashboard_changelist"),
         {"task": "app.tasks.send_email", "queue": "default:emails"}),
    ]


def measure(repeat: int) -> None:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()  # the test client's response.context, ALLOWED_HOSTS
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    print(f"\n{'page':<22} {'best ms':>8} {'runs ms':<24} {'queries':>7}  slowest query (ms)")
    for name, url, params in pages():
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            response = client.get(url, params)
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                sys.exit(f"{name}: HTTP {response.status_code} for {url} {params}")
        with CaptureQueriesContext(connection) as queries:
            client.get(url, params)
        slow = max(queries.captured_queries, key=lambda q: float(q["time"]))
        runs = ", ".join(f"{t:.0f}" for t in times)
        print(f"{name:<22} {min(times):>8.0f} {runs:<24} {len(queries):>7}  "
              f"{float(slow['time']) * 1000:.0f}: {slow['sql'][:110]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--ready", type=int, default=1_000_000)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--refill", action="store_true", help="fill again even if the "
                        "counts match")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ensure_database(args.database_url)
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    setup_django(args.database_url)
    have = counts()
    if args.refill or have != (args.ready, args.finished):
        fill(args.ready, args.finished)
    else:
        print(f"reusing the fill: {have[0]:,} ready + {have[1]:,} finished")
    fill_statistics()  # seconds: always afresh, as of now
    measure(args.repeat)


if __name__ == "__main__":
    main()
