"""Tasks for the crash, rescue and reconnect tests (module path tests.reliability_tasks.*).

Each run appends a line "<job id> <pid> <unix time>" to the file it is given, so a test
can count how many times each job really ran, and when, whatever the job table says.
"""

import os
import time

from django.tasks import task


def _note(path, job_id):
    with open(path, "a") as f:
        f.write(f"{job_id} {os.getpid()} {time.time():.6f}\n")


@task(takes_context=True, max_attempts=3)
def record(context, path):
    _note(path, context.job_id)
    return context.attempt


@task(takes_context=True, max_attempts=3)
def record_slowly(context, path, seconds):
    _note(path, context.job_id)
    time.sleep(seconds)
    return context.attempt


@task(takes_context=True, max_attempts=2)
def spin(context, path, seconds):
    """CPU-bound: no sleeping, no I/O, holds its core for ``seconds``."""
    _note(path, context.job_id)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return context.attempt


@task(takes_context=True, max_attempts=2, backoff=0, jitter=False)
def exit_process(context, path):
    _note(path, context.job_id)
    os._exit(3)


@task()
def pid():
    return os.getpid()


@task(takes_context=True, max_attempts=3)
def collect(context, results, path):
    """A chord body: notes its run, returns how many results it got."""
    _note(path, context.job_id)
    return len(results)
