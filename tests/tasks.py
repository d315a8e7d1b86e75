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


# -- for tests/test_pool.py: tasks that kill, hang or bloat their process ------------------
# None of them touch the database, except db_session.


@task()
def getpid():
    return os.getpid()


@task(max_attempts=2, backoff=0, jitter=False)
def exit_with(code):
    os._exit(code)


@task(max_attempts=3, retry_on=(ConnectionError,), backoff=0, jitter=False)
def exit_not_retryable(code):
    os._exit(code)


@task()
def segfault():
    import ctypes
    import faulthandler

    faulthandler.disable()  # pytest's dump of this expected crash is noise
    ctypes.string_at(0)


@task(time_limit=0.5, max_attempts=2, backoff=0, jitter=False)
def spin():
    while True:
        pass


@task(soft_time_limit=0.2, time_limit=0.6)
def sleep_ignoring_alarm():
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(1e9)


@task(soft_time_limit=0.3, time_limit=10)
def overruns_soft_limit(marker):
    try:
        time.sleep(10)
    finally:
        with open(marker, "w") as f:
            f.write("cleaned up")


@task(soft_time_limit=0.2)
def catches_soft_limit():
    from django_tasks.exceptions import SoftTimeLimitExceeded

    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@task(soft_time_limit=0.2)
def quick_with_soft_limit():
    return os.getpid()


@task()
def allocate(mib):
    data = bytearray(mib * 1024 * 1024)  # zero-filled, so every page is touched
    return len(data) // (1024 * 1024)


@task()
def db_session():
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
        else:
            cursor.execute("SELECT 1")
        return cursor.fetchone()[0]


# -- for tests/test_hardening.py: return values no database could store --------------------


def nested(levels, inner=1):
    """``inner`` inside ``levels`` nested lists."""
    value = inner
    for _ in range(levels):
        value = [value]
    return value


@task(max_attempts=3, backoff=0, jitter=False)
def returns_bad(kind):
    return {
        "deep": lambda: nested(1000),
        "nul": lambda: "a\x00b",
        "surrogate": lambda: b"caf\xe9".decode("utf-8", "surrogateescape"),
    }[kind]()


@task()
def returns_text(text):
    return text


@task(max_attempts=2, backoff=0, jitter=False)
def raises_bad_text():
    raise ValueError("NUL \x00 and " + b"\xff".decode("utf-8", "surrogateescape"))


@task(takes_context=True)
def deletes_own_row(context):
    """What an operator deleting a running job in the admin does, from inside the job."""
    Job.objects.filter(pk=context.job_id).delete()
    return "done"


# -- workflows ---------------------------------------------------------------------------


@task()
def mul(x, y):
    return x * y


@task()
def tsum(values):
    return sum(values)


@task()
def identity(value):
    return value


@task(max_attempts=2, backoff=0, jitter=False)
def fails_twice_then_gives_up(*args):
    raise ValueError("member failed")


@task()
def errback(failed_job_id, note=""):
    return f"{note}handled {failed_job_id}"


@task(ignore_result=True)
def add_quietly(x, y):
    """Celery's ignore_result: its return value is not stored."""
    return x + y


@task(rate_limit="30/s")
def rate_limited(n):
    """At most 30 start per second, across every worker."""
    return n


@task()
def returns_header(name):
    """The header ``name`` of the running job (django_tasks.observe.headers)."""
    from django_tasks.observe.headers import current_headers

    return current_headers().get(name)
