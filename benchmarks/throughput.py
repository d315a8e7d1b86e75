"""Throughput and latency of the brokers (database, Redis, RabbitMQ), job rows on PostgreSQL.

    .venv/bin/python benchmarks/throughput.py [--jobs N] [--repeat R] [--database-url URL]
        [--brokers database,redis,rabbitmq] [--redis-url URL] [--rabbitmq-url URL]

Measures, each R times and for each broker in turn (runs alternate between brokers,
so a noisy phase of the machine hits both; median and every run printed, nothing
asserted):

1. enqueue rate: N x ``noop.enqueue()`` from one producer in autocommit (jobs/s);
2. drain rate: N ready jobs, ``manage.py worker -c 2 --burst`` timed from the start
   of the subprocess to its exit (jobs/s, worker start-up included); all N jobs
   are then checked to be SUCCESSFUL; then the same with two such workers at once
   (unless ``--no-two-workers``), as workers on two machines would share a backlog;
3. latency: a running idle worker (-c 2), 200 jobs enqueued one at a time, each after
   the previous one finished (its row polled from 3 ms after its enqueue on:
   ``LATENCY_HANDS_OFF``); enqueue-to-start = ``started_at - enqueued_at`` (p50, p99).

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_tasks_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BROKERS = ("database", "redis", "rabbitmq")
WORKER = [sys.executable, "manage.py", "worker", "-c", "2", "--loglevel", "WARNING"]
LATENCY_JOBS = 200
#: Seconds the latency run leaves the machine alone after each enqueue before it polls
#: the job's row (every millisecond). Polling from the enqueue on, its own queries and
#: its PostgreSQL backend competed on 2 cores with the path it measures: alternating
#: runs, p50 0.1-0.25 ms higher with Redis and RabbitMQ, whose path crosses one more
#: server (docs/performance.md, the twelfth round). A job that has not started by then
#: is measured all the same, with the polls running.
LATENCY_HANDS_OFF = 0.003


def ensure_database(url: str) -> None:
    """CREATE DATABASE the bench database if it does not exist yet."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    dbname = params.pop("dbname", None)
    if not dbname:
        sys.exit(f"--database-url {url!r} names no database")
    with psycopg.connect(autocommit=True, **{**params, "dbname": "postgres"}) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            print(f"created database {dbname}")


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "sampleproject.settings"
    # DEBUG=True makes every process keep a log of its queries; benchmark without it
    # (override by exporting DEBUG=true).
    os.environ.setdefault("DEBUG", "false")
    os.environ["TASK_MODULES"] = "benchmarks.bench_tasks"  # not an installed app
    os.environ.pop("TASKS_DATABASE_URL", None)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def truncate() -> None:
    """Empty the job and worker tables (and the Redis broker's keys or the RabbitMQ
    broker's queues, when one is in use)."""
    from django.db import connection
    from django.tasks import default_task_backend

    from django_tasks.models import Job, Worker

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Job._meta.db_table}, {Worker._meta.db_table}")
    broker = default_task_backend.broker
    if hasattr(broker, "prefix"):
        for key in broker.client.scan_iter(match=f"{broker.prefix}:*"):
            broker.client.delete(key)
        broker.reconcile([])  # as a first worker would: Redis now holds what is ready
    if hasattr(broker, "topology"):
        from django_tasks.backends.rabbitmq.connection import connect

        conn = connect(broker.url)
        try:
            channel = conn.channel()
            for queue in default_task_backend.queues or ["default"]:
                broker.topology.declare(channel, queue)
                channel.queue_purge(broker.topology.name(queue))
        finally:
            conn.close()


def use_broker(name: str, redis_url: str, rabbitmq_url: str = DEFAULT_RABBITMQ_URL,
               extra: dict[str, object] | None = None) -> None:
    """Make ``name`` the broker of the default backend, here and in worker processes;
    ``extra``: OPTIONS for this process's backend only (e.g. ASYNCHRONOUS_COMMIT)."""
    from django.conf import settings
    from django.test.utils import override_settings

    os.environ["TASKS_BACKEND"] = name
    os.environ["REDIS_URL"] = redis_url
    os.environ["RABBITMQ_URL"] = rabbitmq_url
    default = dict(settings.TASKS["default"])
    options = {k: v for k, v in default["OPTIONS"].items() if k != "URL"}
    if name == "redis":
        options["URL"] = redis_url
    if name == "rabbitmq":
        options["URL"] = rabbitmq_url
    default.update(BACKEND=settings.BROKERS[name], OPTIONS={**options, **(extra or {})})
    override_settings(TASKS={**settings.TASKS, "default": default}).enable()


def status_counts(queue: str | None = None) -> dict[str, int]:
    """Jobs per status (of one queue if given)."""
    from django.db.models import Count

    from django_tasks.models import Job

    jobs = Job.objects.filter(queue_name=queue) if queue else Job.objects.all()
    rows = jobs.values_list("status").annotate(n=Count("id")).order_by("status")
    return dict(rows)


def enqueue_run(n: int) -> float:
    from benchmarks.bench_tasks import noop

    started = time.perf_counter()
    for _ in range(n):
        noop.enqueue()
    return n / (time.perf_counter() - started)


def drain_run(
    n: int,
    worker_args: Sequence[str] = ("--burst",),
    counts: Callable[[], dict[str, int]] = status_counts,
    before: int = 0,
    workers: int = 1,
    exited: Callable[[], None] | None = None,
) -> tuple[float | None, str]:
    """Run ``workers`` x ``manage.py worker -c 2 *worker_args`` to their exit; (jobs/s or
    None, verification).

    N / (start of the subprocesses to the last one's exit). The verification line counts
    rows by status with ``counts`` and reports SUCCESSFUL ones beyond ``before`` (those
    there already). ``exited`` is called once the workers have exited, before that count:
    where a caller reads CPU, so that the count (a scan of the whole table: 0.35-0.44 s
    of PostgreSQL's CPU next to a deep queue's 2,000,000 rows) is not the drain's.
    """
    from django.db import connection

    connection.close()  # nothing of ours holds a lock or idles in a transaction meanwhile
    started = time.perf_counter()
    procs = [subprocess.Popen([*WORKER, *worker_args], cwd=REPO, env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    outputs = [proc.communicate() for proc in procs]
    elapsed = time.perf_counter() - started
    if exited is not None:
        exited()
    found = counts()
    ok = found.get("SUCCESSFUL", 0) - before
    line = f"{ok}/{n} SUCCESSFUL ({', '.join(f'{k}={v}' for k, v in found.items())})"
    failed = False
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or stderr.strip():
            print(f"  worker exited with code {proc.returncode}; output:")
            for text in (stdout, stderr):
                if text.strip():
                    print("    " + text.rstrip().replace("\n", "\n    "))
        failed |= proc.returncode != 0
    if failed:
        return None, line
    return n / elapsed, line


def enqueue_backlog(n: int) -> None:
    """N ready jobs, untimed (one transaction), for a drain."""
    from django.db import transaction
    from django.tasks import default_task_backend

    from benchmarks.bench_tasks import noop

    with transaction.atomic():
        for _ in range(n):
            noop.enqueue()
    flush = getattr(default_task_backend.broker, "flush", None)
    if flush is not None:  # the Redis broker's publishes: all answered before the clock
        flush()


def uuid7_sql(at: str) -> str:
    """SQL for a UUIDv7 of the time ``at`` (an SQL expression), as ``enqueue()`` makes
    them: ids in the order the jobs were enqueued, so the rows a bench makes in bulk
    fill the primary key's index as real ones do (random ids scatter every insert)."""
    return (f"(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0')"
            " || '7' || substr(md5(random()::text), 1, 3) || '8'"
            " || substr(md5(random()::text), 1, 15))::uuid")


def fill_backlog(n: int) -> None:
    """N ready ``noop`` jobs in truncated tables, untimed and fast: one job enqueued as
    usual (one transaction), its row copied n - 1 times by one ``INSERT ... SELECT`` with
    new UUIDv7 ids, and the copies published to the broker (Redis, RabbitMQ) in batches,
    as its reconciling would. Every row is what an ``enqueue()`` writes; only the way
    they got there differs (``enqueue_backlog`` takes ~15 s for 20,000 jobs here)."""
    from django.db import connection, transaction
    from django.tasks import default_task_backend

    from benchmarks.bench_tasks import noop
    from django_tasks.models import READY, Job

    truncate()
    with transaction.atomic():
        first = noop.enqueue().id
    columns = [f.column for f in Job._meta.concrete_fields if not f.primary_key]
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Job._meta.db_table} (id, {names}) "
            f"SELECT {uuid7_sql('clock_timestamp()')}, {names} "
            f"FROM {Job._meta.db_table}, generate_series(2, %s) WHERE id = %s", [n, first])
    broker = default_task_backend.broker
    if not hasattr(broker, "_publish_rows"):  # the database broker: the rows are the queue
        return
    rows = (Job.objects.filter(status=READY).exclude(pk=first).order_by("pk")
            .values_list("id", "queue_name", "priority", "available_at"))
    publish = (_unconfirmed_publisher(broker) if hasattr(broker, "topology")
               else broker._publish_rows)
    batch: list[tuple] = []
    for row in rows.iterator(chunk_size=5000):
        batch.append((str(row[0]), *row[1:]))
        if len(batch) == 5000:
            publish(batch)
            batch = []
    publish(batch)
    if hasattr(broker, "topology"):
        publish(None)  # wait until RabbitMQ holds them all
    else:
        broker.flush()


def _unconfirmed_publisher(broker) -> Callable[[list[tuple] | None], None]:
    """RabbitMQ: publish rows as the broker does, on a channel without publisher confirms
    (a confirm per job makes 20,000 take ~30 s); called with None, closes the channel
    once RabbitMQ counts every message published."""
    from django_tasks.backends.base import epoch_ms
    from django_tasks.backends.rabbitmq.connection import connect

    publisher = broker.publisher
    conn = connect(broker.url)
    channel = conn.channel()
    sent: dict[str, int] = {}

    def publish(rows: list[tuple] | None) -> None:
        if rows is not None:
            frames = []
            for job_id, queue, priority, at in rows:
                if queue not in sent:
                    broker.topology.declare(channel, queue)
                # One id a message, as single enqueues publish them.
                frames.append(publisher.frames(channel.channel_number,
                                               [(job_id, queue, priority, epoch_ms(at))]))
                sent[queue] = sent.get(queue, 0) + 1
            if frames:
                channel._impl.connection._output_marshaled_frames([b"".join(frames)])
            return
        deadline = time.monotonic() + 60
        # Written to the connection's buffer: it writes them when it processes its I/O.
        conn.process_data_events(time_limit=0)
        while any(publisher.counts([q])[q][0] < k for q, k in sent.items()):
            if time.monotonic() > deadline:
                raise TimeoutError("RabbitMQ did not count every published message")
            conn.process_data_events(time_limit=0.05)
        conn.close()

    return publish


def wait_finished(job_id, timeout: float = 10.0) -> str:
    from django_tasks.models import FINISHED, Job

    deadline = time.monotonic() + timeout
    while True:
        status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        if status in FINISHED:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout}s")
        time.sleep(0.001)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def latency_run(reading: Callable[[int], Any] | None = None
                ) -> tuple[float, float, Any] | None:
    """(p50 ms, p99 ms, CPU) of enqueue-to-start over LATENCY_JOBS sequential jobs, or
    None. ``reading(worker_pid)``: a CPU reading (readings subtract), taken before and
    after those jobs; CPU is their difference (None without ``reading``)."""
    truncate()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(WORKER, cwd=REPO, env=os.environ.copy(), stdout=log, stderr=log)
        try:
            return _measure_latency(proc, reading)
        except Exception as exc:
            print(f"  latency run failed: {exc!r}")
            return None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.seek(0)
            output = log.read().strip()
            if proc.returncode != 0 or output:
                print(f"  worker exited with code {proc.returncode}; output:")
                if output:
                    print("    " + output.replace("\n", "\n    "))


def _measure_latency(proc: subprocess.Popen, reading: Callable[[int], Any] | None
                     ) -> tuple[float, float, Any]:
    import uuid

    from benchmarks.bench_tasks import noop
    from django_tasks.models import Job, Worker

    # Idle = registered, then a few warm-up jobs have gone through.
    deadline = time.monotonic() + 30
    while not Worker.objects.filter(pid=proc.pid, stopped_at__isnull=True).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("worker did not register")
        time.sleep(0.01)
    for _ in range(3):
        wait_finished(uuid.UUID(noop.enqueue().id), timeout=30)
    ids = []
    before = reading(proc.pid) if reading else None
    for _ in range(LATENCY_JOBS):
        job_id = uuid.UUID(noop.enqueue().id)
        time.sleep(LATENCY_HANDS_OFF)
        status = wait_finished(job_id)
        if status != "SUCCESSFUL":
            raise RuntimeError(f"job {job_id} ended {status}")
        ids.append(job_id)
    used = reading(proc.pid) - before if reading else None
    rows = Job.objects.filter(pk__in=ids).values_list("enqueued_at", "started_at")
    latencies = [(s - e).total_seconds() * 1000 for e, s in rows]
    return percentile(latencies, 50), percentile(latencies, 99), used


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "FAILED"
    return f"{value:,.0f} {unit}" if unit == "jobs/s" else f"{value:.2f} {unit}"


def median(runs: Sequence[float | None]) -> float | None:
    """Median of the runs, or None if any run failed (or there are none)."""
    good = [v for v in runs if v is not None]
    return statistics.median(good) if len(good) == len(runs) and good else None


def print_table(header: Sequence[str], table: Sequence[Sequence[str]]) -> None:
    """Print rows of cells as columns, ``header`` first, then a rule."""
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, None, *table]:
        if row is None:
            print("-+-".join("-" * w for w in widths))
        else:
            print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="N jobs (default %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure (default %(default)s)"
    )
    parser.add_argument("--database-url", default=DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--brokers", default=",".join(BROKERS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="default %(default)s")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL,
                        help="default %(default)s")
    parser.add_argument("--no-two-workers", dest="two_workers", action="store_false",
                        help="skip the drain by two workers at once")
    args = parser.parse_args()
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not brokers or set(brokers) - set(BROKERS):
        parser.error(f"--brokers takes a comma-separated list of {', '.join(BROKERS)}")

    ensure_database(args.database_url)
    setup_django(args.database_url)

    n, r = args.jobs, args.repeat
    results: dict[tuple[str, str], list[float | None]] = {}
    began = time.perf_counter()
    for i in range(1, r + 1):
        for broker in brokers:
            use_broker(broker, args.redis_url, args.rabbitmq_url)
            truncate()
            rate = enqueue_run(n)
            results.setdefault((broker, "enqueue"), []).append(rate)
            drained, check = drain_run(n)
            results.setdefault((broker, "drain"), []).append(drained)
            print(f"run {i}/{r} {broker}: enqueue {fmt(rate, 'jobs/s')}, drain "
                  f"{fmt(drained, 'jobs/s')}; after drain: {check}")
            if args.two_workers:
                truncate()
                enqueue_backlog(n)
                drained, check = drain_run(n, workers=2)
                results.setdefault((broker, "drain 2"), []).append(drained)
                print(f"run {i}/{r} {broker}: drain by 2 workers {fmt(drained, 'jobs/s')}; "
                      f"after drain: {check}")
    for i in range(1, r + 1):
        for broker in brokers:
            use_broker(broker, args.redis_url, args.rabbitmq_url)
            lat = latency_run()
            p50, p99, _ = lat if lat else (None, None, None)
            results.setdefault((broker, "latency p50"), []).append(p50)
            results.setdefault((broker, "latency p99"), []).append(p99)
            print(f"latency run {i}/{r} {broker}: p50 {fmt(p50, 'ms')}, p99 {fmt(p99, 'ms')}")
    truncate()

    from django.db import connection

    print()
    print(f"django_tasks, job rows on PostgreSQL {connection.pg_version // 10000}, "
          f"{os.cpu_count()} CPU(s), N={n}, repeat={r}, worker -c 2 (prefork), results "
          f"stored, total {time.perf_counter() - began:.0f} s")
    rows = [
        ("enqueue (1 producer, autocommit)", "enqueue", "jobs/s"),
        ("drain (worker -c 2 --burst, incl. start)", "drain", "jobs/s"),
        *([("drain, 2 workers at once (each -c 2)", "drain 2", "jobs/s")]
          if args.two_workers else []),
        (f"latency p50 (enqueue->start, {LATENCY_JOBS} jobs)", "latency p50", "ms"),
        (f"latency p99 (enqueue->start, {LATENCY_JOBS} jobs)", "latency p99", "ms"),
    ]
    header = ["metric", *brokers, *(f"{b} / {brokers[0]}" for b in brokers[1:])]
    table = []
    for name, metric, unit in rows:
        medians = [median(results[(b, metric)]) for b in brokers]
        row = [name, *(fmt(m, unit) for m in medians)]
        a = medians[0]
        row += [f"{b / a:.2f}x" if a and b else "-" for b in medians[1:]]
        table.append(row)
    print_table(header, table)
    print()
    print("every run:")
    for _, metric, unit in rows:
        for b in brokers:
            print(f"  {metric} {b}: " + ", ".join(fmt(v, unit) for v in results[(b, metric)]))


if __name__ == "__main__":
    main()
