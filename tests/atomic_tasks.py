"""Tasks for tests/test_atomic.py (module path tests.atomic_tasks.*): each writes one
``Effect`` row per run, atomic (``atomic=True``) or not."""

import os
import time

from django.db import connections, transaction
from django.tasks import task

from tests.models import Effect


def _write(context, pause=0.0):
    Effect.objects.create(job_id=context.job_id, pid=os.getpid())
    if pause:
        time.sleep(pause)


@task(atomic=True, takes_context=True, max_attempts=3, backoff=0, jitter=False)
def insert(context, pause=0.0):
    _write(context, pause)
    return context.attempt


@task(takes_context=True, max_attempts=3, backoff=0, jitter=False)
def insert_plain(context, pause=0.0):
    _write(context, pause)
    return context.attempt


@task(atomic=True, takes_context=True, max_attempts=3, backoff=0, jitter=False)
def insert_then_fail(context, failures):
    """Fails its first ``failures`` attempts after writing; an on_commit callback writes
    a second row (job id + ":committed") only when the attempt commits."""
    _write(context)
    transaction.on_commit(lambda: Effect.objects.create(job_id=f"{context.job_id}:committed"))
    if context.attempt <= failures:
        raise ValueError(f"attempt {context.attempt} fails after writing")
    return context.attempt


@task(atomic=True, takes_context=True, max_attempts=2, time_limit=1, backoff=0, jitter=False)
def insert_then_overrun(context, seconds):
    """Writes, reports progress (seen at once, through the side connection), then sleeps
    past its hard time limit on its first attempt."""
    _write(context)
    context.report_progress(1, 2, "written")
    if context.attempt == 1:
        time.sleep(seconds)
    return context.attempt


@task(atomic=True, takes_context=True, max_attempts=2, backoff=0, jitter=False)
def insert_then_wait(context, seconds):
    """Writes, reports progress, then sleeps: for a test that freezes the worker."""
    _write(context)
    context.report_progress(1, 2, "written")
    time.sleep(seconds)
    return context.attempt


@task(atomic=True, takes_context=True)
def insert_and_enqueue(context):
    """Writes and enqueues another job: the enqueue is part of the transaction."""
    _write(context)
    return insert_plain.enqueue().id


@task(atomic=True, takes_context=True, max_attempts=3)
def write_elsewhere(context):
    _write(context)
    with connections["other"].cursor() as cursor:
        cursor.execute("CREATE TABLE elsewhere (x integer)")
