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


@task(takes_context=True, max_attempts=3)
def until_cancelled(context, path, seconds):
    """Cooperative: works until told to cancel (notes 'saw' then) or ``seconds`` pass."""
    _note(path, context.job_id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.is_cancelled():
            with open(path + ".saw", "a") as f:
                f.write(f"{context.job_id}\n")
            return "stopped"
        time.sleep(0.01)
    return "done"


@task(takes_context=True, max_attempts=3, cancel_grace=0.5)
def ignores_cancel(context, path, seconds):
    """Never looks at is_cancelled(): only the pool's kill stops it."""
    _note(path, context.job_id)
    time.sleep(seconds)
    return "done"


@task(takes_context=True)
def progress_in_transaction(context, path):
    """Reports progress inside an open transaction, then waits for ``path + '.go'``."""
    from django.db import transaction

    from django_tasks.models import Job

    with transaction.atomic():
        Job.objects.filter(pk=context.job_id).exists()  # the transaction has begun
        context.report_progress(1, 3, "inside a transaction")
        _note(path, context.job_id)
        deadline = time.monotonic() + 30
        while not os.path.exists(path + ".go") and time.monotonic() < deadline:
            time.sleep(0.01)
    return "done"


@task(takes_context=True, max_attempts=3)
def cancels_itself(context):
    """Asks to cancel its own job, then stops when told (drives the cooperative path
    in-process, with the inline pool)."""
    from django.tasks import task_backends

    task_backends["default"].cancel([context.job_id], by="itself")
    if context.is_cancelled():
        return "stopped"
    return "not told"


@task(takes_context=True, max_attempts=3)
def interrupts(context, path):
    """Raises KeyboardInterrupt itself (a BaseException, not an Exception)."""
    _note(path, context.job_id)
    raise KeyboardInterrupt("raised by the task")


@task(takes_context=True)
def fails_first_run(context, path):
    """Fails the first time it runs (one attempt: it ends FAILED), succeeds after."""
    _note(path, context.job_id)
    with open(path) as f:
        if sum(line.split()[0] == context.job_id for line in f) == 1:
            raise ValueError("the first run fails")
    return "second run"
