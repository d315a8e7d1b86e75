"""What a chord costs: a group of N no-op members and a callback, against N independent jobs.

    .venv/bin/python benchmarks/workflows.py [--jobs N] [--repeat R] [--brokers database,redis]
        [--database-url URL] [--redis-url URL]

For each broker, R times, alternating the two shapes (independent, chord, independent, ...):

- **independent**: N x ``noop.enqueue()`` in one transaction;
- **chord**: ``chord([noop.si()] * N, count.s()).delay()`` (one transaction too);

each with one idle ``manage.py worker -c 2`` already running (started and registered
before the clock starts). Two times per run: **enqueue** (to the commit) and **finish**
(from the commit until every job, or the chord's callback, is SUCCESSFUL, polled every
10 ms). The table prints medians (every run in brackets) and chord / independent for the
finish time, the figure the issue's target is about (<= 2x). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import (
    DEFAULT_REDIS_URL,
    DEFAULT_URL,
    REPO,
    WORKER,
    ensure_database,
    median,
    print_table,
    setup_django,
    truncate,
    use_broker,
)


def start_worker() -> subprocess.Popen:
    from django.db import connection

    from django_tasks.models import Worker

    connection.close()
    proc = subprocess.Popen(WORKER, cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not Worker.objects.filter(stopped_at__isnull=True).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"the worker did not start: {err}")
        time.sleep(0.01)
    time.sleep(0.2)  # past its start-up round trips: idle, waiting for work
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        print(f"  worker exited with {proc.returncode}: {err.strip()[-2000:]}")


def wait_until(done, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the jobs to finish")
        time.sleep(0.01)


def independent(n: int) -> tuple[float, float]:
    from django.db import transaction

    from benchmarks.bench_tasks import noop
    from django_tasks.models import Job

    started = time.perf_counter()
    with transaction.atomic():
        for _ in range(n):
            noop.enqueue()
    committed = time.perf_counter()
    wait_until(lambda: Job.objects.filter(status="SUCCESSFUL").count() == n)
    return committed - started, time.perf_counter() - committed


def chord_of(n: int) -> tuple[float, float]:
    from benchmarks.bench_tasks import count, noop
    from django_tasks import chord
    from django_tasks.models import Job

    started = time.perf_counter()
    result = chord([noop.si() for _ in range(n)], count.s()).delay()
    committed = time.perf_counter()
    body = Job.objects.filter(pk=result.id)
    wait_until(lambda: body.filter(status__in=["SUCCESSFUL", "FAILED"]).exists())
    finished = time.perf_counter()
    assert body.get().return_value == n, body.get().errors
    return committed - started, finished - committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="N (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="runs (default %(default)s)")
    parser.add_argument("--database-url", default=DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--brokers", default="database,redis")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="default %(default)s")
    args = parser.parse_args()
    ensure_database(args.database_url)
    setup_django(args.database_url)
    rows = []
    for broker in args.brokers.split(","):
        use_broker(broker, args.redis_url)
        runs: dict[str, list[tuple[float, float]]] = {"independent": [], "chord": []}
        for _ in range(args.repeat):
            for shape, run in (("independent", independent), ("chord", chord_of)):
                truncate()
                proc = start_worker()
                try:
                    runs[shape].append(run(args.jobs))
                finally:
                    stop_worker(proc)
        finish = {k: median([f for _, f in v]) for k, v in runs.items()}
        for shape, values in runs.items():
            enq = median([e for e, _ in values])
            ratio = (f"{finish[shape] / finish['independent']:.2f}x"
                     if shape == "chord" and finish[shape] and finish["independent"] else "")
            each = ", ".join(f"{f * 1000:.0f}" for _, f in values)
            rows.append([broker, shape, f"{enq * 1000:.0f} ms",
                         f"{finish[shape] * 1000:.0f} ms ({each})", ratio])
    truncate()
    print(f"\n{args.jobs} no-op jobs, worker -c 2, medians of {args.repeat} runs")
    print_table(["broker", "shape", "enqueue", "finish (runs)", "chord / independent"], rows)


if __name__ == "__main__":
    main()
