"""Unique tasks used by tests/test_unique.py (module path tests.unique_tasks.*)."""

from datetime import timedelta

from django.tasks import task


@task(unique=True)
def unique_add(x, y):
    return x + y


@task()
def plain(x):
    return x


@task(unique=True, unique_for=timedelta(minutes=10))
def unique_windowed(x):
    return x


@task(unique=True, takes_context=True, max_attempts=2)
def unique_retried_later(context):
    raise context.retry(countdown=60)


@task(unique=True)
def unique_fails():
    raise ValueError("unique failure")
