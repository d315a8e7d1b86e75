"""Cancelling jobs: the request, stored in the job's row, and what workers ask of it.

A job that has not started (READY, scheduled, WAITING in a workflow) is CANCELLED at
once, in the request's transaction, with the outcome hooks (its workflow moves on as
after a failure). A job a worker holds gets ``Job.cancellation`` (the error entry it
will end with); the outcome statements (``APPLY_OUTCOME*`` in :mod:`django_tasks.jobs.postgresql`
and :mod:`django_tasks.jobs.sqlite`) then write whatever its attempt ends with as
CANCELLED, so the request and the outcome, both
writes to one row, are ordered: exactly one final state. Workers learn of requests by
their cancel poll (:meth:`Cancelling.cancelling`); a running task by
``context.is_cancelled()`` (:meth:`Cancelling.cancel_requested`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..ids import job_id_str
from ..serialization import dumps
from ..states import CANCELLED, HELD, READY, WAITING
from .messages import Outcome

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Cancelling", "cancelled_outcome"]


class Cancelling:
    """:class:`~django_tasks.jobs.store.JobStore`'s cancelling verbs (a part of it)."""

    # What JobStore provides; declared for readers and type checkers.
    database: str
    backend_alias: str
    engine: Any
    applied: Any
    run_hooks: Any

    def _cancelled_claims(self, worker_id: str, ids: set[str] | None) -> list[Outcome]:
        """CANCELLED outcomes for what ``worker_id`` claimed, never started and was asked
        to cancel (give-back leaves those claimed)."""
        claims = [(job_id_str(c.id), c) for c in self.engine.cancelled_claims(worker_id)]
        return [cancelled_outcome(i, c.lease, c.task_path) for i, c in claims
                if ids is None or i in ids]

    # -- cancelling -------------------------------------------------------------------

    def cancel(self, job_ids: Sequence[Any], *, by: str = "", terminate: bool = False,
               expired: bool = False, now: datetime | None = None) -> dict[str, str]:
        """Cancel these jobs; returns what became of each id asked about:

        - ``"cancelled"``: it was READY or WAITING and is CANCELLED now (it never runs);
          its workflow moves on as after a failure (the outcome hooks run in this
          transaction);
        - ``"cancelling"``: a worker holds it (claimed or running); it is marked, and
          ends CANCELLED whatever its attempt does: its worker drops it unstarted, or
          tells the running task (``context.is_cancelled()``) and, with
          ``cancel_grace``, kills it (prefork);
        - ``"already cancelling"``; ``"finished <STATUS>"``: nothing changed;
        - ``"unknown"``: no such job in this backend.

        The mark is in the row: it survives worker restarts and rescues.
        """
        from ..models import Job

        ids = []
        for value in job_ids:
            try:
                ids.append(str(uuid.UUID(str(value))))
            except ValueError:
                continue
        now = now or timezone.now()
        error = {
            "exception_class_path": "django_tasks.exceptions.Cancelled",
            "message": "cancelled" + (f" by {by}" if by else ""),
            "traceback": "", "attempt": 0, "worker_id": "", "occurred_at": now.isoformat(),
        }
        if terminate:
            error["terminate"] = True
        if expired:  # Celery's expires: a worker took it after its expiry time
            error.update(exception_class_path="django_tasks.exceptions.Expired",
                         message="expired: not started before its expiry time")
        done: dict[str, str] = {}
        pending = ids
        # Two guarded statements, then a look at what neither changed. A job given back
        # (CLAIMED -> READY) between the two is missed by both: go round again for it.
        for _ in range(3):
            if not pending:
                break
            self._cancel_round(pending, error, now, done)
            moved = []
            for pk, status, cancellation in (
                Job.objects.using(self.database)
                .filter(pk__in=[i for i in pending if i not in done], backend=self.backend_alias)
                .values_list("pk", "status", "cancellation")
            ):
                if status in (READY, WAITING):
                    moved.append(str(pk))
                elif status in HELD:
                    done[str(pk)] = "already cancelling" if cancellation else "cancelling"
                else:
                    done[str(pk)] = f"finished {status}"
            pending = moved
        for i, value in zip_ids(job_ids, ids):
            done.setdefault(i or str(value), "unknown")
        for job_id, what in done.items():
            if what in ("cancelled", "cancelling"):
                logger.info("Job %s %s%s", job_id, what, f" (by {by})" if by else "")
        return done

    def _cancel_round(self, ids: list[str], error: dict[str, Any], now: datetime,
                      done: dict[str, str]) -> None:
        error_json = dumps(error)
        with transaction.atomic(using=self.database):
            applied = [self.applied(row) for row in self.engine.cancel_unheld(ids, error_json, now)]
            done.update((a.id, "cancelled") for a in applied)
            # Counted in the statistics as CANCELLED, without durations: they never ran.
            self.engine.count([(a.queue_name, a.task_path, a.status, None, None)
                               for a in applied], now)
            self.run_hooks(applied)
            done.update((job_id_str(i), "cancelling")
                        for i in self.engine.cancel_held(ids, error_json))

    def cancelling(self, worker_id: str) -> dict[str, bool]:
        """The jobs ``worker_id`` holds that were asked to cancel (the cancel poll): id ->
        whether to kill it at once (``revoke(terminate=True)``)."""
        return {job_id_str(row.id): bool((row.cancellation or {}).get("terminate"))
                for row in self.engine.cancelling_of(worker_id)}

    def cancel_requested(self, job_id: str) -> bool:
        """Whether cancelling ``job_id`` was asked for, as committed now (read on the side
        connection, outside any transaction of the caller's)."""
        return self.engine.cancel_requested(job_id)


def cancelled_outcome(job_id: str, lease: str, task_path: str = "", *,
                      linked: bool = True) -> Outcome:
    """The outcome of a job asked to cancel that never started: it is CANCELLED (no attempt
    counted; the store appends the row's cancellation as its error). ``linked``: it may
    be a workflow step (its write runs every outcome hook), unless the caller knows."""
    return Outcome(id=job_id, lease=lease, status=CANCELLED,
                   finished_at=timezone.now().isoformat(), task_path=task_path,
                   linked=linked)


def zip_ids(values: Sequence[Any], ids: Sequence[str]) -> list[tuple[str | None, Any]]:
    """Pair each value asked about with its canonical id (None if it is not a UUID)."""
    out, parsed = [], iter(ids)
    for value in values:
        try:
            uuid.UUID(str(value))
        except ValueError:
            out.append((None, value))
        else:
            out.append((next(parsed), value))
    return out
