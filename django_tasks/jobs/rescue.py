"""Workers and what they hold: the registry, and the rescue of a lost worker's jobs.

:class:`~django_tasks.jobs.store.JobStore`'s verbs about workers (a part of it, as
:class:`~django_tasks.jobs.cancel.Cancelling` is). A worker is a row that heart-beats
by the database's clock; one that stops doing so past ``WORKER_TIMEOUT``, or whose
process is gone, is declared dead, and every job a non-running worker holds goes
through the same failure policy as any exception (``WorkerLost``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from django.utils import timezone

from ..exceptions import WorkerLost
from ..ids import job_id_str
from ..states import FAILED, READY
from .messages import Start
from .policy import as_datetime, failure_outcome, send_failed, task_or_none
from .tally import RESCUED, tally

__all__ = ["Registry", "RescueCounts"]


class RescueCounts(NamedTuple):
    given_back: int
    retried: int
    failed: int


class Registry:
    """:class:`~django_tasks.jobs.store.JobStore`'s worker registry and rescue (a part of it)."""

    # What JobStore provides; declared for readers and type checkers.
    database: str
    worker_timeout: float
    engine: Any
    now: Any
    held_by: Any
    give_back: Any
    messages: Any
    apply_outcomes: Any
    _cancelled_claims: Any

    # -- rescue -------------------------------------------------------------------------

    def rescue(self, worker_id: str, reason: str, *, job_ids: Sequence[str] | None = None,
               now: datetime | None = None) -> RescueCounts:
        """Free the jobs ``worker_id`` holds (all, or ``job_ids``) because it is gone.

        Claimed, never started: READY again untouched. Started: the attempt ended with
        ``WorkerLost(reason)``, decided by the task's policy like any exception
        (``retry_on``, backoff, ``max_attempts``); ``task_finished`` is sent for those
        that end FAILED. Only jobs still held under the lease read here change.
        """
        now = now or timezone.now()
        ids = None if job_ids is None else {str(i) for i in job_ids}
        given_back = self.engine.give_back_all(worker_id) if ids is None else 0
        rows = self.engine.running_of(worker_id)
        if ids is not None:
            held = [(i, lease) for i, lease in self.held_by(worker_id) if i in ids]
            given_back = self.give_back([Start(i, lease, "") for i, lease in held])
            rows = [row for row in rows if job_id_str(row.id) in ids]
        last_attempted = {job_id_str(row.id): row.last_attempted_at for row in rows}
        outcomes, messages = self._cancelled_claims(worker_id, ids), {}
        for message in self.messages(rows, worker_id, now):
            message.attempt -= 1  # the attempt that was running is already counted
            message.worker_ids.pop()
            started = as_datetime(last_attempted[message.id])
            ran = (now - started).total_seconds() if started else 0.0
            outcome = failure_outcome(message, WorkerLost(reason), worker_id, now=now,
                                      task=task_or_none(message.task_path), duration=ran,
                                      notify=False)
            outcome.ran = ran if started else None  # for the statistics
            outcomes.append(outcome)
            messages[message.id] = message
        applied = self.apply_outcomes(worker_id, outcomes)
        # The attempts rescued, in the running totals (django_tasks_total) only.
        self.engine.add_totals(tally(now, self.backend_alias, [
            (a.queue_name, a.task_path, RESCUED, None, None) for a in applied
            if a.id in messages]))
        errors = {o.id: o.error for o in outcomes}
        failed = [a for a in applied if a.status == FAILED]
        for a in failed:  # sent once written: a job another writer won is not reported
            task = task_or_none(a.task_path)
            if task is not None:
                send_failed(messages[a.id], task, errors[a.id], now)
        retried = sum(a.status == READY for a in applied)
        return RescueCounts(given_back, retried, len(applied) - retried)

    def rescue_orphans(self, rescuer_id: str, now: datetime | None = None,
                       is_gone: Callable[[Any], bool] | None = None,
                       ) -> list[tuple[str, str, RescueCounts]]:
        """Declare dead the workers that stopped heart-beating, and free every job held by
        a worker that is not running (stopped, declared dead, or unknown).

        Dead means: its last heartbeat is older than ``WORKER_TIMEOUT`` by the
        database's clock (``now`` overrides it, for tests), or at once when
        ``is_gone(worker)`` says its process no longer exists (a check only a worker on
        the same host can make). Returns ``(worker id, reason, counts)`` for each
        worker whose jobs were rescued.
        """
        from ..models import Worker

        now = now or self.now()
        workers = Worker.objects.using(self.database)
        timeout = self.worker_timeout
        for w in workers.expired(now, timeout).exclude(id=rescuer_id):
            silent = (now - w.last_heartbeat_at).total_seconds()
            self.declare_dead(w.id, f"declared dead by {rescuer_id}: no heartbeat for "
                                    f"{silent:.0f} s (WORKER_TIMEOUT {timeout:g} s)", now)
        if is_gone is not None:
            for w in workers.running().exclude(id=rescuer_id):
                if is_gone(w):
                    self.declare_dead(w.id, f"declared dead by {rescuer_id}: process "
                                            f"{w.pid} on {w.hostname} is gone", now)
        holders = set(self.engine.holders())
        if not holders:
            return []
        live = set(workers.running().filter(id__in=holders).values_list("id", flat=True))
        reasons = dict(workers.filter(id__in=holders - live).values_list("id", "stop_reason"))
        rescued = []
        for holder in sorted(holders - live):
            why = reasons.get(holder) or "not registered"
            reason = f"worker {holder or '(none)'} was lost while running the job ({why})"
            counts = self.rescue(holder, reason, now=now)
            if any(counts):
                rescued.append((holder, why, counts))
        return rescued

    # -- the worker registry -----------------------------------------------------------

    def register_worker(self, *, is_gone: Callable[[Any], bool] | None = None,
                        **fields: Any) -> None:
        """Record a worker as running, under an id no live worker has.

        A stopped worker's id may be taken again (a restart under a fixed
        ``--worker-id``), and so may the id of a worker that is dead but not declared so
        yet: silent past ``WORKER_TIMEOUT``, or ``is_gone(worker)`` (its process no
        longer exists; a check only a worker on the same host can make). Its jobs are
        rescued first. A live worker's id raises ``WorkerIdInUse``.
        """
        from ..exceptions import WorkerIdInUse
        from ..models import Worker

        now = self.now()
        worker_id = fields.pop("id")
        fields.update(started_at=now, last_heartbeat_at=now, stopped_at=None, stop_reason="")
        workers = Worker.objects.using(self.database)
        # Single statements rather than update_or_create's transaction: on SQLite a
        # read-then-write transaction fails at once ("database is locked") when another
        # worker writes in between, while single statements wait their turn.
        if workers.filter(id=worker_id, stopped_at__isnull=False).update(**fields):
            return
        old = workers.filter(id=worker_id).first()
        if old is not None:
            expired = workers.expired(now, self.worker_timeout).filter(id=worker_id).exists()
            if not (expired or (is_gone is not None and is_gone(old))):
                raise WorkerIdInUse(
                    f"A running worker is registered as {worker_id!r}; give this one another "
                    "--worker-id (or none: a unique one is generated), or stop that one first."
                )
            why = "no heartbeat" if expired else f"process {old.pid} on {old.hostname} is gone"
            self.declare_dead(worker_id, f"replaced by a new worker under its id ({why})", now)
            self.rescue(worker_id, f"worker {worker_id} was lost while running the job ({why})",
                        now=now)
            workers.filter(id=worker_id).update(**fields)
            return
        workers.create(id=worker_id, **fields)

    def heartbeat(self, worker_id: str, counters: dict[str, int] | None = None) -> bool:
        """Record that ``worker_id`` is alive now (database clock), with its ``counters``
        (``processed``, ``failed``, ``memory``: the Worker row's fields); False if it was
        declared dead."""
        from ..models import Worker

        return bool(
            Worker.objects.using(self.database).running().filter(id=worker_id)
            .update(last_heartbeat_at=self.now(), **(counters or {}))
        )

    def unregister_worker(self, worker_id: str, reason: str = "shutdown",
                          counters: dict[str, int] | None = None) -> None:
        """Mark ``worker_id`` stopped (with its last ``counters``, as :meth:`heartbeat`);
        whatever it still holds becomes rescuable at once."""
        from ..models import Worker

        Worker.objects.using(self.database).filter(id=worker_id).update(
            stopped_at=self.now(), stop_reason=reason[:200], **(counters or {})
        )

    def prune_workers(self, before: datetime) -> int:
        """Delete the rows of workers not heard from since ``before`` that hold no job."""
        from ..models import Worker

        return Worker.objects.using(self.database).prune(before, now=self.now(),
                                                         timeout=self.worker_timeout)

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` whose rows exist."""
        from ..models import Job

        return {str(pk) for pk in Job.objects.using(self.database)
                .filter(pk__in=list(job_ids)).values_list("pk", flat=True)}

    def declare_dead(self, worker_id: str, reason: str, now: datetime) -> None:
        from ..models import Worker

        Worker.objects.using(self.database).running().filter(id=worker_id).update(
            stopped_at=now, stop_reason=reason[:200]
        )
