"""The task the throughput benchmark runs: it does nothing, so only the queue is measured."""

from django.tasks import task


@task()
def noop():
    return None


@task()
def count(values):
    """A chord body: how many results it got."""
    return len(values)
