"""The task the throughput benchmark runs: it does nothing, so only the queue is measured."""

from django.tasks import task


@task()
def noop():
    return None
