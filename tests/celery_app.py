"""A Celery project's tasks, written as Celery's documentation writes them (First Steps,
the Tasks and Calling guides), ported by changing the import line only: run by
tests/test_celery_app.py on every broker."""

from django_tasks.celery import shared_task  # was: from celery import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task(name="tests.celery_app.mul")
def mul(x, y):
    return x * y


@shared_task(bind=True, queue="emails", max_retries=3, default_retry_delay=0,
             acks_late=True, track_started=True, serializer="json")
def send_welcome(self, address, fail_times=0):
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"SMTP down at retry {self.request.retries}"))
    return f"sent to {address} after {self.request.retries} retries"


@shared_task(rate_limit="20/s", ignore_result=True)
def ping(n):
    return n


@shared_task(expires=3600)
def report(month):
    return f"report {month}"


@shared_task
def broken():
    raise ValueError("bad input")


@shared_task
def on_error(task_id):
    """An error callback (Celery's old-style errback: the failed task's id)."""
    return f"handled {task_id}"
