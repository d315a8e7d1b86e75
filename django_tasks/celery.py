"""Celery's names, for code ported from Celery: change the imports and keep the code.

::

    from django_tasks.celery import AsyncResult, shared_task   # was: from celery import ...

    @shared_task(bind=True, queue="emails", max_retries=3)
    def send_welcome_email(self, user_id): ...

    result = send_welcome_email.apply_async((42,), countdown=10)
    AsyncResult(result.id).state        # "PENDING", then "STARTED", "SUCCESS"

Every Celery task and calling option has an answer (``django_tasks.celery_options``;
the table is in docs/coming-from-celery.md).
"""

from __future__ import annotations

from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task, task_backends

from .results import GroupResult, JobResult
from .workflows.canvas import chain, chord, group, signature

__all__ = ["AsyncResult", "GroupResult", "chain", "chord", "group", "shared_task",
           "signature"]

#: Celery's ``@shared_task`` (and ``@app.task``): Django's ``@task``, whose backends make
#: our ``Task`` with Celery's options answered. Bare or with options.
shared_task = task


def AsyncResult(id: str, *, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> JobResult:
    """The result of job ``id`` (Celery's ``AsyncResult(id)``), read now from the job
    table of ``TASKS[backend]``.

    Unlike Celery, whose ``AsyncResult`` of an unknown id reads ``PENDING`` for ever, an
    id with no job raises Django's ``TaskResultDoesNotExist``. A job whose task was
    renamed or removed in a deploy still reads (status, errors), under a stand-in task.
    """
    return task_backends[backend].get_result(id)
