"""Result objects returned by our backends: Django's, with ``wait()``/``get()``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.tasks import base as django_base

from .exceptions import ResultTimeout, TaskFailed

__all__ = ["JobError", "JobResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobError(django_base.TaskError):
    """One failed attempt: Django's ``TaskError`` plus message, attempt, worker and time."""

    message: str = ""
    attempt: int = 0
    worker_id: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult(django_base.TaskResult):
    """Django's ``TaskResult`` for a job stored in the database."""

    def wait(
        self, timeout: float | None = None, *, interval: float = 0.05, propagate: bool = True
    ) -> Any:
        """Block until the job has finished, then return its return value.

        Raises ``ResultTimeout`` (a ``TimeoutError``) if it has not finished within
        ``timeout`` seconds, and ``TaskFailed`` if it failed (unless
        ``propagate=False``, which returns None instead). Polls the result store,
        starting at ``interval`` seconds and backing off to one second.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = interval
        while True:
            self.refresh()
            if self.is_finished:
                break
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(
                        f"Job {self.id} ({self.task.module_path}) is still {self.status} "
                        f"after {timeout} s."
                    )
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        if self.status == django_base.TaskResultStatus.SUCCESSFUL:
            return self.return_value
        if propagate:
            last = self.errors[-1] if self.errors else None
            detail = (
                f": {last.exception_class_path}: {getattr(last, 'message', '')}" if last else ""
            )
            raise TaskFailed(
                f"Job {self.id} ({self.task.module_path}) failed after "
                f"{self.attempts} attempt(s){detail}"
            )
        return None

    #: Celery's name for :meth:`wait`.
    get = wait
