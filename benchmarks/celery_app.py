"""Celery 5.7 + Redis, the side-by-side reference of ``bench.py`` (run by the Celery
virtualenv's interpreter, ``benchmarks/.celery-venv``; never imported by django_tasks).

    CELERY_BENCH_BROKER=redis://127.0.0.1:6379/7 [CELERY_BENCH_RESULTS=redis://...] \\
        benchmarks/.celery-venv/bin/python -m benchmarks.celery_app enqueue N

``enqueue N`` calls ``noop.delay()`` N times from this process and prints the rate
(jobs/s, the interpreter's start-up excluded). The worker is ``celery -A
benchmarks.celery_app worker``. Without ``CELERY_BENCH_RESULTS`` results are off
(``task_ignore_result``); with it, each task's result is stored in that Redis.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery

RESULTS = os.environ.get("CELERY_BENCH_RESULTS") or None
app = Celery("bench", broker=os.environ.get("CELERY_BENCH_BROKER", "redis://127.0.0.1:6379/7"),
             backend=RESULTS)
app.conf.update(task_ignore_result=RESULTS is None, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="noop")
def noop():
    return None


def enqueue(n: int) -> float:
    noop.delay()  # connects; not timed
    started = time.perf_counter()
    for _ in range(n - 1):
        noop.delay()
    return (n - 1) / (time.perf_counter() - started)


if __name__ == "__main__":
    if sys.argv[1:2] != ["enqueue"] or len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.celery_app enqueue N")
    print(f"{enqueue(int(sys.argv[2])):.1f}")
