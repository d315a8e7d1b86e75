"""Job rows: what every broker shares.

Whatever carries the messages (the job table itself, Redis), the truth about a job is
its row: status, attempts, errors, result, progress, who holds it and under which
lease. :class:`JobStore` is the one place that changes rows on a worker's behalf.
Its guarantees:

- a write about a held job (start, outcome, progress, give-back) matches the claim's
  ``lease``, so a worker that lost the job changes nothing;
- :meth:`JobStore.apply_outcomes` reports which outcomes it wrote and runs the
  registered outcome hooks in the same transaction, so what must follow an outcome
  (a chain's next step, a chord's counter) happens exactly once or not at all;
- a lost worker's jobs go through the same policy as any failure
  (:func:`django_tasks.jobs.policy.failure_outcome`);
- liveness (heartbeats, expiry) is judged by the database's clock, never a host's.

Its parts: the statements it runs, and how its database differs, are its engine's
(:mod:`django_tasks.jobs.postgresql` or :mod:`django_tasks.jobs.sqlite`, picked once when
the store is built; :mod:`django_tasks.jobs.engine` says what an engine does); the worker
registry and the rescue of lost workers' jobs are in :mod:`django_tasks.jobs.rescue`;
cancelling in :mod:`django_tasks.jobs.cancel`; the statistics in
:mod:`django_tasks.jobs.statistics`. Where a job is enqueued: :meth:`JobStore.insert`;
claimed: :meth:`JobStore.exchange` (the engine's ``CLAIM_*`` statements); completed:
:meth:`JobStore.exchange` and :meth:`JobStore.apply_outcomes`, what an outcome means being
:mod:`django_tasks.jobs.policy`'s and what follows it the outcome hooks'
(:mod:`django_tasks.workflows.advance`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.utils import ConnectionDoesNotExist
from django.utils import timezone

from ..exceptions import OutcomeHookFailed
from ..ids import job_id_str
from ..serialization import dumps
from ..states import CLAIMED, FAILED, READY
from .cancel import Cancelling, cancelled_outcome
from .engine import Engine, Row, Unavailable
from .messages import (
    Applied,
    ByIds,
    ByQueues,
    Exchanged,
    Message,
    NewJob,
    Outcome,
    Start,
    stale_of,
)
from .policy import as_datetime, error_dict
from .postgresql import PostgreSQL
from .rescue import Registry, RescueCounts
from .rows import Decremented, FailedStep, MessageRow
from .sqlite import SQLite
from .statistics import Statistics
from .tally import written_of

logger = logging.getLogger("django_tasks.worker")

__all__ = ["BATCH_SIZE", "ENGINES", "JobStore", "OutcomeHook", "RescueCounts", "hooks_for",
           "register_outcome_hook"]

#: Jobs a bulk insert writes per statement (``JobStore.insert_many``): the batch travels
#: as one JSON document, so this bounds memory and statement size, not parameters.
BATCH_SIZE = 1000

#: The engine of each database vendor django_tasks stores jobs in.
ENGINES: dict[str, type[Engine]] = {"postgresql": PostgreSQL, "sqlite": SQLite}

#: ``hook(store, applied)``: runs inside the transaction that wrote ``applied``.
OutcomeHook = Callable[["JobStore", list[Applied]], None]
_OUTCOME_HOOKS: list[OutcomeHook] = []
#: Hooks that act only on jobs with workflow links (``Applied.links``): a worker's round
#: trip whose outcomes are all of plain jobs skips them, and with them the transaction
#: around its one statement (BEGIN and COMMIT: ~11% of the database broker's drain).
_LINKED_ONLY: list[OutcomeHook] = []


def register_outcome_hook(hook: OutcomeHook, *, linked_only: bool = False) -> OutcomeHook:
    """Run ``hook(store, applied)`` in the transaction of every outcome write (decorator).

    ``applied`` lists the outcomes that were written (stale ones are not); if the hook
    raises, the outcomes are not written either and the worker tries again.
    ``linked_only``: the hook does nothing for outcomes of jobs outside workflows, so a
    worker may leave it out when none of its outcomes is of a workflow job
    (``Outcome.linked``).
    """
    if hook not in _OUTCOME_HOOKS:
        _OUTCOME_HOOKS.append(hook)
    if linked_only and hook not in _LINKED_ONLY:
        _LINKED_ONLY.append(hook)
    return hook


def hooks_for(outcomes: Sequence[Outcome]) -> list[OutcomeHook]:
    """The hooks a write of ``outcomes`` must run (see ``linked_only``)."""
    if not outcomes:
        return []
    if any(o.linked for o in outcomes):
        return _OUTCOME_HOOKS
    return [h for h in _OUTCOME_HOOKS if h not in _LINKED_ONLY]


class JobStore(Registry, Cancelling, Statistics):
    """The job rows and worker registry of one backend, on one database alias."""

    def __init__(self, backend_alias: str, database: str, *, worker_timeout: float,
                 republish: Callable[[Sequence[str]], None] | None = None) -> None:
        self.backend_alias = backend_alias
        self.database = database
        self.worker_timeout = worker_timeout
        #: This database's statements and ways, chosen once (see :mod:`.engine`).
        self.engine: Engine = engine_for(backend_alias, database)
        #: Makes jobs a follow-up made READY (a workflow's next step) claimable and wakes
        #: the workers of their queues, once the caller's transaction commits: the
        #: broker's ``republish``, given by the backend that built both.
        self.republish: Callable[[Sequence[str]], None] = republish or _no_broker
        #: OPTIONS["ASYNCHRONOUS_COMMIT"] (set by the backend): an enqueue that is its own
        #: transaction commits without waiting for the disk.
        self.asynchronous_commit = False

    @property
    def connection(self) -> Any:
        return connections[self.database]

    # -- enqueueing ---------------------------------------------------------------------

    def insert(self, job: NewJob, *, notify: str | None = None) -> bool:
        """INSERT a new job (checked already) on this store's connection, in the caller's
        transaction; returns False, having stored nothing, if it is unique and an active
        job holds its key.

        ``notify``: a channel to NOTIFY in the same statement (delivered at commit; only
        if a row was inserted), where the database :attr:`notifies`. No model instance
        is built (a ``Job`` and its fields' preparation were half an enqueue's Python
        time) and no signal is sent for jobs.

        With :attr:`asynchronous_commit`, an INSERT that is its own transaction (no
        transaction open, autocommit) commits without waiting for the disk; one in the
        caller's transaction never changes how that transaction commits.
        """
        if self.asynchronous_commit:
            connection = self.connection
            alone = connection.get_autocommit() and not connection.in_atomic_block
            return self.engine.insert_one(job, notify=notify, no_disk_wait=alone)
        return self.engine.insert_one(job, notify=notify)

    def insert_many(self, jobs: Sequence[NewJob], *, channels: Sequence[str] = (),
                    meanwhile: Iterator[None] | None = None) -> set[str] | None:
        """INSERT new jobs (checked already) on this store's connection, in the caller's
        transaction: one statement per :data:`BATCH_SIZE` jobs. If any is unique, returns
        the ids inserted: a job whose key an active job holds (or an earlier job of the
        batch took) is not. None when none is unique (every job was inserted).

        ``channels``: NOTIFY them at commit, where the database :attr:`notifies`: one
        NOTIFY per channel in each batch's statement (never one per job), which
        PostgreSQL delivers once per transaction.

        More than one batch and none unique, in a transaction, on PostgreSQL: one COPY
        instead (its NOTIFY once per channel), and ``meanwhile`` (the caller's work
        in steps) is stepped while the database loads the rows; the caller runs
        whatever steps are left afterwards. A step must not use the database
        connection: the COPY holds it (psycopg's lock: the step would wait forever).
        """
        unique = any(j.unique_key for j in jobs)
        if (not unique and len(jobs) > BATCH_SIZE and all(j.call_split for j in jobs)
                and self.engine.copy_many(jobs, channels=channels, meanwhile=meanwhile)):
            return None
        inserted: set[str] = set()
        for start in range(0, len(jobs), BATCH_SIZE):
            ids = self.engine.insert_many(jobs[start:start + BATCH_SIZE], unique=unique,
                                          channels=channels)
            if ids:
                inserted |= ids
        return inserted if unique else None

    @property
    def notifies(self) -> bool:
        """Whether this database wakes listeners (:meth:`notify`, :meth:`listen`)."""
        return self.engine.notifies

    def notify(self, channels: Sequence[str]) -> None:
        """NOTIFY these channels once the caller's transaction commits."""
        self.engine.notify(channels)

    def listen(self, channels: Sequence[str]) -> Any:
        """A waitable (``fileno()``, ``drain()``, ``close()``) readable once any of these
        channels is notified."""
        return self.engine.listen(channels)

    def queues_of(self, job_ids: Sequence[str]) -> set[str]:
        """The queues of these jobs."""
        from ..models import Job

        return set(Job.objects.using(self.database).filter(pk__in=list(job_ids))
                   .values_list("queue_name", flat=True))

    def unique_holder(self, key: str, since: datetime | None = None) -> Any | None:
        """The active ``Job`` holding ``key``, or with ``since`` the last finished one
        enqueued at or after ``since``; None if there is none."""
        return self.engine.unique_holder(key, since)

    def now(self) -> datetime:
        """The database's clock: what liveness and expiry are judged by."""
        return self.engine.now()

    # -- reading claimed rows -------------------------------------------------------------

    def message(self, row: Any, worker_id: str) -> Message:
        """The message for a claimed row (any row with MessageRow's columns, read by name)."""
        row = self.engine.decode(row)
        return Message(
            id=job_id_str(row.id), lease=row.lease, task_path=row.task_path,
            queue_name=row.queue_name, priority=row.priority, backend=row.backend,
            args=row.args, kwargs=row.kwargs, attempt=row.attempts + 1,
            max_attempts=row.max_attempts, worker_ids=[*row.worker_ids, worker_id],
            errors=row.errors, enqueued_at=_iso(row.enqueued_at),
            started_at=_iso(row.started_at), run_after=_iso(row.run_after),
            available_at=_iso(row.available_at),
            workflow_id=None if row.workflow_id is None else str(row.workflow_id),
            expires_at=None if row.expires_at is None else _iso(row.expires_at),
            headers=row.headers,
        )

    def messages(self, rows: Sequence[Any], worker_id: str,
                 now: datetime | None = None) -> list[Message]:
        """The messages for claimed rows; a row that cannot be read fails alone.

        A malformed row (say ``worker_ids`` that is not a list, written by hand or by
        another program) must neither stop the worker that claimed it nor, rescued and
        claimed again, every worker in turn: it is marked FAILED with the reason, and
        the others go on.
        """
        messages = []
        for row in rows:
            try:
                messages.append(self.message(row, worker_id))
            except Exception as exc:
                self.fail_unreadable(row, exc, now)
        return messages

    def claimed(self, rows: Sequence[Any], worker_id: str) -> tuple[list[Message], tuple[str, ...]]:
        """:meth:`messages` for the rows a claim returned, in claim order (highest priority,
        then oldest: RETURNING has no order; the ISO strings, all UTC, sort like the
        times they name), and the ids of those that could not be read."""
        messages = self.messages(rows, worker_id)
        messages.sort(key=lambda m: (-m.priority, m.available_at or ""))
        if len(messages) == len(rows):
            return messages, ()
        read = {m.id for m in messages}
        return messages, tuple(i for i in (job_id_str(r.id) for r in rows) if i not in read)

    def fail_unreadable(self, row: Any, exc: Exception, now: datetime | None = None) -> None:
        from ..models import Job

        reason = (f"The job's row cannot be read ({type(exc).__name__}: {exc}); it was "
                  "failed without running. Fix or delete the row.")
        logger.error("Job %s FAILED: %s", row.id, reason)
        now = now or timezone.now()
        error = {**error_dict(exc, 0, "", now), "message": reason, "traceback": "",
                 "exception_class_path": "django_tasks.exceptions.TasksError"}
        # The errors list is replaced: it may be what is malformed.
        Job.objects.using(self.database).filter(pk=row.id, lease=row.lease).update(
            status=FAILED, finished_at=now, lease="", errors=[error])

    # -- the worker's round trip ----------------------------------------------------------

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), claim: ByQueues | ByIds,
                 now: datetime | None = None) -> Exchanged:
        """The worker's round trip: record ``starts``, write ``outcomes`` (with the outcome
        hooks, in their transaction), then make ``claim`` under ``lease``.

        ``claim`` is :class:`ByQueues` (the job table is the queue) or :class:`ByIds` (a
        broker that carries ids chose them). Each part is fenced by leases: a start or
        outcome whose lease no longer holds its job changes nothing and comes back in
        ``stale``; a replay is harmless. ``now`` (tests) replaces the database's clock
        for the claim. How many statements it takes is the engine's: one on PostgreSQL,
        one per start, per outcome and the claim in one transaction on SQLite. Outcomes an
        atomic task wrote itself (``Outcome.written``) are reported applied, not written.
        """
        outcomes, done = split_written(outcomes)
        if not (starts or outcomes or claim.wanted):
            return Exchanged([], done, [])
        rows, applied = self.engine.exchange(self, worker_id, lease, starts, outcomes,
                                             claim, now)
        claimed, unreadable = self.claimed(rows, worker_id)
        return Exchanged(claimed, applied + done, stale_of(outcomes, applied), unreadable)

    def claim(self, worker_id: str, lease: str, claim: ByQueues | ByIds,
              now: datetime | None = None) -> Exchanged:
        """Atomically take the jobs ``claim`` names (best first) under ``lease``, in one
        statement; nobody else can claim them until they are finished, given back or
        rescued. Only ``claimed`` and ``unreadable`` are filled."""
        claimed, unreadable = self.claimed(self.engine.claim(worker_id, lease, claim, now),
                                           worker_id)
        return Exchanged(claimed, [], [], unreadable)

    def exchange_parts(self, worker_id: str, lease: str, starts: Sequence[Start],
                       outcomes: Sequence[Outcome], claim: ByQueues | ByIds,
                       now: datetime | None) -> tuple[list[MessageRow], list[Applied]]:
        """The round trip as three parts (the engine says in which transaction)."""
        self.record_starts(worker_id, starts)
        # Not counted here: the worker that made the round trip counts what it wrote.
        applied = self.apply_outcomes(worker_id, outcomes, count=False)
        return self.engine.claim(worker_id, lease, claim, now), applied

    def write_with_hooks(self, outcomes: Sequence[Outcome],
                         write: Callable[[], tuple[list[Row], list[Any]]],
                         ) -> tuple[list[Row], list[Applied]]:
        """Run ``write`` (one statement writing ``outcomes``; returns its other rows and
        the outcome rows written) with the outcome hooks ``outcomes`` need in its
        transaction. If a hook fails, all of it is rolled back and
        :class:`OutcomeHookFailed` propagates: the caller then makes the parts one by one
        (:meth:`apply_outcomes` fails only the jobs whose hooks fail)."""
        hooks = hooks_for(outcomes)
        atomic = transaction.atomic(using=self.database) if hooks else nullcontext()
        with atomic:
            rows, written = write()
            applied = [self.applied(row) for row in written]
            if hooks:
                self.run_hooks(applied, hooks)
        if len(hooks) < len(_OUTCOME_HOOKS) and any(a.links for a in applied):
            # An outcome of a workflow step not marked ``linked`` (a bug): move its
            # workflow now, in a transaction of its own, rather than leave it waiting.
            logger.error("Outcomes of workflow steps were written without their hooks; "
                         "running them now: %s", ", ".join(a.id for a in applied if a.links))
            with transaction.atomic(using=self.database):
                self.run_hooks([a for a in applied if a.links], _LINKED_ONLY)
        return rows, applied

    def record_starts(self, worker_id: str, starts: Sequence[Start]) -> int:
        """Mark claimed jobs RUNNING (attempt counted), where the lease still holds them."""
        if not starts:
            return 0
        return self.engine.record_starts(worker_id, starts)

    def has_ready(self, queues: Sequence[str], now: datetime | None = None) -> bool:
        """Whether a job of ``queues`` is READY and due: what ``--burst`` waits for,
        whatever the broker holds."""
        from ..models import Job

        return (Job.objects.using(self.database).ready(now or self.now(), list(queues))
                .filter(backend=self.backend_alias).exists())

    def ready_rows(self, job_ids: Sequence[str]) -> list[tuple[str, str, int, datetime]]:
        """``(id, queue, priority, available_at)`` of those jobs that are READY."""
        from ..models import Job

        if not job_ids:
            return []
        rows = (Job.objects.using(self.database)
                .filter(status=READY, backend=self.backend_alias, pk__in=list(job_ids))
                .values_list("id", "queue_name", "priority", "available_at"))
        return [(str(i), q, p, a) for i, q, p, a in rows]

    # -- outcomes -------------------------------------------------------------------------

    def apply_outcomes(self, worker_id: str, outcomes: Sequence[Outcome], *,
                       hooks: bool = True, count: bool = True) -> list[Applied]:
        """Write outcomes whose lease still holds the job; returns those written.

        Runs the outcome hooks with what was written, in the same transaction: all of
        it commits, or none of it. A hook that fails (other than by a database outage)
        fails only the jobs it failed on: the batch is written again one outcome at a
        time, and an outcome whose hooks still fail is written as FAILED with the
        hook's error, without hooks (see :meth:`fail_by_hook`). ``count``: add what was
        written to the statistics in the same transaction (a worker's round trip does
        not: the worker counts, see :meth:`add_statistics`). Outcomes an atomic task
        wrote itself (``Outcome.written``) are returned as applied, not written again.
        """
        outcomes, done = split_written(outcomes)
        if done:
            return done + self.apply_outcomes(worker_id, outcomes, hooks=hooks, count=count)
        if not outcomes:
            return []
        try:
            with transaction.atomic(using=self.database):
                applied = self._write_outcomes(worker_id, outcomes)
                if hooks:
                    self.run_hooks(applied)
                if count and applied:
                    self.engine.count(written_of(applied, outcomes), timezone.now())
            return applied
        except OutcomeHookFailed as failure:
            if len(outcomes) > 1:
                return [a for o in outcomes
                        for a in self.apply_outcomes(worker_id, [o], count=count)]
            return self.fail_by_hook(worker_id, outcomes[0], failure, count=count)

    def apply_in_transaction(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        """Write ``outcomes`` (where their lease holds) and run the outcome hooks they
        need, in the caller's transaction and without a savepoint of its own (an atomic
        task's: django_tasks.worker.atomic); returns those written. A hook's failure
        propagates (:class:`OutcomeHookFailed`): the caller rolls everything back."""
        applied = self._write_outcomes(worker_id, outcomes)
        self.run_hooks(applied, hooks_for(outcomes))
        return applied

    def _write_outcomes(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        return [self.applied(row) for row in self.engine.write_outcomes(worker_id, outcomes)]

    def fail_by_hook(self, worker_id: str, outcome: Outcome,
                     failure: OutcomeHookFailed, *, count: bool = True) -> list[Applied]:
        """Write ``outcome`` as FAILED with the hook's error, running no hooks.

        A bug in a hook (workflow code, an extension) must neither be retried forever
        nor stop the worker and then every worker that rescues the job: the job fails
        alone, visibly, with the traceback.
        """
        cause = failure.__cause__ or failure
        logger.error("Job %s FAILED: outcome hook %s raised %s: %s", outcome.id, failure.hook,
                     type(cause).__name__, cause)
        now = timezone.now()
        error = {
            **error_dict(cause, 0, worker_id, now),  # the hook's exception and traceback
            "exception_class_path": "django_tasks.exceptions.OutcomeHookFailed",
            "message": f"outcome hook {failure.hook} raised {type(cause).__name__}: {cause} "
                       f"(the attempt had ended {outcome.status})",
        }
        failed = replace(outcome, status=FAILED, error=error, finished_at=now.isoformat(),
                         retry_at=None, retry_delay=None, return_value=None)
        # The hooks see the failure (a workflow fails what waits for the job, instead
        # of leaving it waiting forever), unless they fail on it too.
        try:
            with transaction.atomic(using=self.database):
                applied = self._write_outcomes(worker_id, [failed])
                self.run_hooks(applied)
                if count and applied:
                    self.engine.count(written_of(applied, [failed]), now)
            return applied
        except OutcomeHookFailed:
            return self.apply_outcomes(worker_id, [failed], hooks=False, count=count)

    def applied(self, row: Any) -> Applied:
        """An outcome row written (any row with Applied's columns, read by name)."""
        row = self.engine.decode(row)
        return Applied(job_id_str(row.id), row.status, row.task_path, row.queue_name,
                       row.attempts, row.links)

    def run_hooks(self, applied: list[Applied],
                  hooks: Sequence[OutcomeHook] | None = None) -> None:
        """Run the outcome hooks (all, or ``hooks``; call inside the transaction that
        wrote ``applied``).

        A hook's database error propagates as it is (an outage: the write is retried);
        anything else becomes :class:`OutcomeHookFailed`.
        """
        if applied:
            for hook in _OUTCOME_HOOKS if hooks is None else hooks:
                try:
                    hook(self, applied)
                except DatabaseError:
                    raise
                except Exception as exc:
                    name = getattr(hook, "__qualname__", repr(hook))
                    raise OutcomeHookFailed(name) from exc

    def give_back(self, messages: Sequence[Message | Start]) -> int:
        """Claimed jobs that never started go back to READY untouched; returns how many.

        Those asked to cancel meanwhile are written CANCELLED instead (not counted).
        """
        if not messages:
            return 0
        released = self.engine.give_back([(m.id, m.lease) for m in messages])
        if released < len(messages):
            from ..models import Job

            leases = {m.id: m.lease for m in messages}
            rows = (Job.objects.using(self.database)
                    .filter(pk__in=list(leases), status=CLAIMED, cancellation__isnull=False)
                    .values_list("pk", "lease", "task_path"))
            self.apply_outcomes("", [cancelled_outcome(str(pk), lease, path)
                                     for pk, lease, path in rows if leases.get(str(pk)) == lease])
        return released

    def give_back_at(self, messages: Sequence[Message], at: datetime) -> int:
        """Claimed jobs that never started go back to READY, due at ``at`` (a rate
        limit's next free slot), and are published again for brokers that carry ids;
        returns how many. Those asked to cancel meanwhile are written CANCELLED."""
        released = self.engine.give_back_at([(m.id, m.lease) for m in messages], at)
        if released < len(messages):
            self.give_back(messages)  # writes the cancelled ones; the others are READY
        self.republish([m.id for m in messages])
        return released

    def reserve(self, key: str, interval: float, want: int,
                horizon: float) -> tuple[float, int, float]:
        """Start slots of a rate-limited key (``django_tasks.rates``): ``(next_at,
        granted, now)`` in seconds since the epoch, by the database's clock."""
        return self.engine.reserve(key, interval, want, horizon)

    def held_by(self, worker_id: str) -> list[tuple[str, str]]:
        """``(id, lease)`` of every job ``worker_id`` holds (claimed or running)."""
        from ..models import Job

        rows = (Job.objects.using(self.database).held().filter(worker_id=worker_id)
                .values_list("id", "lease"))
        return [(str(i), lease) for i, lease in rows]

    def report_progress(self, job_id: str, progress: dict[str, Any], lease: str = "") -> bool:
        """Store a running job's latest progress (last write wins) while ``lease`` holds it;
        visible to other connections at once, even while the task holds a transaction
        open (written on this thread's side connection, in autocommit).

        Without a lease (called outside a worker) any held job takes the report. On
        SQLite, inside the task's own transaction, the report is written in that
        transaction (SQLite has one writer at a time: a second connection would wait
        for the task to commit) and seen when it commits.
        """
        return self.engine.report_progress(job_id, dumps(progress), lease)

    # -- workflows (the outcome hook's writes) --------------------------------------------

    def decrement_waiting(self, job_id: str, n: int) -> Decremented | None:
        """Count ``n`` inputs of a WAITING workflow step as done; None if it is not
        waiting. Exactly one caller sees ``waiting_on`` reach 0."""
        row = self.engine.decrement(job_id, n)
        return None if row is None else self.engine.decode(row)

    def fail_waiting(self, job_id: str, error: dict[str, Any],
                     now: datetime) -> FailedStep | None:
        """FAIL a WAITING workflow step with ``error``, without running it; None if it is
        not waiting (already failed by another branch, or cancelled)."""
        row = self.engine.fail_waiting(job_id, dumps(error), now)
        return None if row is None else self.engine.decode(row)

    # -- operator actions ------------------------------------------------------------------

    def retry_failed(self, job_ids: Sequence[Any], *, by: str = "") -> list[str]:
        """Make these FAILED jobs READY for one more attempt (errors kept); returns their ids.

        A unique job is not retried while another job holds its key (of several with
        one key, only the newest is). A workflow step that never ran (a step before it
        failed) is not retried: the input it waited for does not exist. Each job
        retried records who asked (``by``) and when in its ``retried`` field, as a
        cancel records it in its error entry.
        """
        from django.db.models import F, Q

        from ..models import Job

        jobs = (Job.objects.using(self.database).failed().filter(pk__in=list(job_ids))
                .exclude(Q(attempts=0) & Q(links__has_key="inputs")))
        with transaction.atomic(using=self.database):
            rows = list(jobs.select_for_update().order_by("-enqueued_at")
                        .values_list("id", "unique_key"))
            now = self.now()
            changes = {"status": READY, "available_at": now, "finished_at": None,
                       "worker_id": "", "lease": "", "max_attempts": F("attempts") + 1,
                       "retried": {"by": by, "at": now.isoformat()}}
            ids = [str(i) for i, key in rows if not key]
            Job.objects.using(self.database).filter(pk__in=ids).update(**changes)
            # A unique job READY again holds its key once more: not while another job
            # holds it (nor two of the same key), which the unique index refuses.
            for job_id, key in rows:
                if not key:
                    continue
                try:
                    with transaction.atomic(using=self.database):
                        Job.objects.using(self.database).filter(pk=job_id).update(**changes)
                except IntegrityError:
                    continue
                ids.append(str(job_id))
        if ids:
            logger.info("%d job(s) retried%s: %s", len(ids), f" (by {by})" if by else "",
                        " ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""))
        return ids


def split_written(outcomes: Sequence[Outcome]) -> tuple[Sequence[Outcome], list[Applied]]:
    """``outcomes`` still to write, and as :class:`Applied` those written already (by
    an atomic task, in its own transaction: django_tasks.worker.atomic)."""
    if not any(o.written for o in outcomes):
        return outcomes, []
    return ([o for o in outcomes if not o.written],
            [Applied(*o.written) for o in outcomes if o.written])


def engine_for(backend: str, database: str) -> Engine:
    """The engine of ``database``'s vendor; an :class:`Unavailable` one (raising on use,
    reported by ``manage.py check``) for another vendor or an alias not in DATABASES."""
    try:
        vendor = connections[database].vendor
    except ConnectionDoesNotExist:
        return Unavailable(database, None)  # type: ignore[return-value]
    engine = ENGINES.get(vendor)
    if engine is None:
        return Unavailable(database, vendor)  # type: ignore[return-value]
    return engine(backend, database)


def _no_broker(job_ids: Sequence[str]) -> None:
    raise RuntimeError("This JobStore was built without a broker to republish jobs through: "
                       "build stores with their backend (ModelBackend).")


def _iso(value: Any) -> str | None:
    if type(value) is datetime and value.tzinfo is not None:  # PostgreSQL's: as is
        return value.isoformat()
    dt = as_datetime(value)
    return dt.isoformat() if dt is not None else None
