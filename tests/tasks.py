"""Tasks used by the tests (module path tests.tasks.*)."""

import os
import time

from django.tasks import task

from django_tasks.models import Job


@task()
def add(x, y):
    return x + y


@task(queue_name="emails", priority=10)
def send_email(to):
    return f"sent to {to}"


@task()
def routed():
    return "routed"


@task(max_attempts=3, backoff=0, jitter=False)
def always_fails():
    raise ValueError("nope")


@task(max_attempts=3, retry_on=(ConnectionError,), backoff=0, jitter=False)
def fails_with_type_error():
    raise TypeError("not retryable")


@task(takes_context=True, max_attempts=3, backoff=0, jitter=False)
def retries_then_succeeds(context):
    if context.attempt < 3:
        raise context.retry(countdown=0, exc=ConnectionError(f"flaky {context.attempt}"))
    return context.attempt


@task(takes_context=True, max_attempts=2)
def retry_in_a_minute(context):
    raise context.retry(countdown=60)


@task()
def returns_set():
    return {1, 2}


@task()
async def async_add(x, y):
    return x + y


@task(takes_context=True)
def progress(context):
    context.report_progress(1, 2, "half")
    return Job.objects.get(pk=context.job_id).progress["message"]


@task()
def sleep_then_return(seconds, marker=None):
    time.sleep(seconds)
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    return seconds


not_a_task = os.getcwd
