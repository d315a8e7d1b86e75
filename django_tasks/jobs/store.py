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

Its parts: the SQL it runs (named statements with named parameters, vendor fragments
in braces) is in :mod:`django_tasks.jobs.statements`; the worker registry and the rescue of
lost workers' jobs in :mod:`django_tasks.jobs.rescue`; cancelling in
:mod:`django_tasks.jobs.cancel`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime
from functools import cached_property
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from ..exceptions import OutcomeHookFailed
from ..ids import job_id_str
from ..serialization import dumps
from ..states import CLAIMED, FAILED, HELD, HELD_SQL, READY
from .cancel import Cancelling, cancelled_outcome
from .messages import Applied, Message, Outcome, Start
from .policy import as_datetime, error_dict
from .rescue import Registry, RescueCounts
from .side import on_side
from .statements import (
    APPLY_OUTCOME,
    APPLY_OUTCOMES_PG,
    CLAIM_IDS_PG,
    CLAIM_IDS_SQLITE,
    GIVE_BACK,
    MESSAGE_COLUMNS,
    ON_CONFLICT_UNIQUE,
    PROGRESS,
    RECORD_START,
    RECORD_STARTS_PG,
    UNIQUE_ACTIVE,
    UNIQUE_RECENT,
    VENDORS,
)

logger = logging.getLogger("django_tasks.worker")

__all__ = ["HELD", "HELD_SQL", "MESSAGE_COLUMNS", "JobStore", "OutcomeHook", "RescueCounts",
           "hooks_for", "job_id_str", "outcomes_params", "register_outcome_hook",
           "starts_params"]

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


def outcome_hooks() -> list[OutcomeHook]:
    return _OUTCOME_HOOKS


class JobStore(Registry, Cancelling):
    """The job rows and worker registry of one backend, on one database alias."""

    def __init__(self, backend_alias: str, database: str, *, worker_timeout: float) -> None:
        self.backend_alias = backend_alias
        self.database = database
        self.worker_timeout = worker_timeout
        self._sql_cache: dict[str, str] = {}
        self._insert_texts: dict[tuple[int, ...], str] = {}

    # -- plumbing ---------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        return connections[self.database]

    @cached_property
    def vendor(self) -> str:
        return self.connection.vendor

    def sql(self, statement: str) -> str:
        """``statement`` with this database's table name and vendor fragments (cached:
        statements are module constants, and the hot path asks for the same few)."""
        try:
            return self._sql_cache[statement]
        except KeyError:
            pass
        from ..models import Job

        fragments = VENDORS.get(self.vendor)
        if fragments is None:
            raise NotImplementedError(
                f"django_tasks stores jobs in PostgreSQL or SQLite, not {self.vendor}."
            )
        table = self.connection.ops.quote_name(Job._meta.db_table)
        text = self._sql_cache[statement] = statement.format(table=table, **fragments)
        return text

    def insert_sql(self, job: Any) -> tuple[str, Sequence[Any]]:
        """The INSERT of a new ``Job`` instance, compiled for this database (model
        ``save()`` machinery bypassed: no signals are sent for jobs). A unique job's
        inserts nothing while an active job holds its key (``ON_CONFLICT_UNIQUE``).

        The statement text depends only on which values are ``Now()`` (the database's
        clock: ``available_at`` of a job due at once), so it is compiled once per shape
        and each job only has its values prepared, as Django's compiler prepares them.
        Compiling was ~40% of an enqueue's Python time. Any other expression takes
        Django's full path.
        """
        fields = type(job)._meta.concrete_fields
        values = [f.pre_save(job, True) for f in fields]
        shape = tuple(i for i, v in enumerate(values) if hasattr(v, "resolve_expression"))
        if any(type(values[i]) is not Now for i in shape):
            sql, params = self._compile_insert(job)
        else:
            sql = self._insert_texts.get(shape)
            if sql is None:
                sql = self._insert_texts[shape] = self._compile_insert(job)[0]
            connection = self.connection
            params = [f.get_db_prep_save(v, connection)
                      for i, (f, v) in enumerate(zip(fields, values, strict=True))
                      if i not in shape]
        if job.unique_key:
            sql += ON_CONFLICT_UNIQUE
        return sql, params

    def _compile_insert(self, job: Any) -> tuple[str, Sequence[Any]]:
        from django.db.models.sql import InsertQuery

        query = InsertQuery(type(job))
        query.insert_values(type(job)._meta.concrete_fields, [job])
        [(sql, params)] = query.get_compiler(using=self.database).as_sql()
        return sql, params

    def insert(self, job: Any) -> bool:
        """INSERT a new job on this store's connection (in the caller's transaction);
        returns False, having stored nothing, if it is unique and an active job holds
        its key."""
        sql, params = self.insert_sql(job)
        with self.connection.cursor() as cursor:
            if not job.unique_key:
                cursor.execute(sql, params)
                return True
            cursor.execute(sql + " RETURNING 1", params)
            return bool(cursor.fetchall())

    def unique_holder(self, key: str, since: datetime | None = None) -> Any | None:
        """The active ``Job`` holding ``key``, or with ``since`` the last finished one
        enqueued at or after ``since``; None if there is none."""
        from ..models import Job

        params: dict[str, Any] = {"backend": self.backend_alias, "key": key}
        if since is None:
            sql = self.sql(UNIQUE_ACTIVE)
        else:
            sql, params["since"] = self.sql(UNIQUE_RECENT), self.time(since)
        return next(iter(Job.objects.db_manager(self.database).raw(sql, params)), None)

    def job_id(self, value: str) -> Any:
        """A job id as this database's driver takes it (SQLite stores 32 hex digits)."""
        return uuid.UUID(value) if self.vendor == "postgresql" else uuid.UUID(value).hex

    def time(self, value: str | datetime | None) -> Any:
        dt = as_datetime(value)
        if dt is None or self.vendor == "postgresql":
            return dt
        return self.connection.ops.adapt_datetimefield_value(dt)

    def now(self) -> datetime:
        """The database's clock: what liveness and expiry are judged by."""
        query = VENDORS.get(self.vendor, {}).get("now")
        if not query:
            return timezone.now()
        with self.connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchone()[0]

    def message(self, row: Sequence[Any], worker_id: str) -> Message:
        """The message for a claimed row (columns as MESSAGE_COLUMNS)."""
        (job_id, lease, task_path, queue_name, priority, backend, args, kwargs, attempts,
         max_attempts, worker_ids, errors, enqueued_at, started_at, run_after,
         available_at, workflow_id) = row[:len(MESSAGE_COLUMNS)]
        if isinstance(args, str):  # SQLite returns JSON as text
            args, kwargs = json.loads(args), json.loads(kwargs)
            worker_ids, errors = json.loads(worker_ids), json.loads(errors)
        return Message(
            id=job_id_str(job_id), lease=lease, task_path=task_path,
            queue_name=queue_name, priority=priority, backend=backend, args=args,
            kwargs=kwargs, attempt=attempts + 1, max_attempts=max_attempts,
            worker_ids=[*worker_ids, worker_id], errors=errors,
            enqueued_at=_iso(enqueued_at), started_at=_iso(started_at),
            run_after=_iso(run_after), available_at=_iso(available_at),
            workflow_id=None if workflow_id is None else str(workflow_id),
        )

    def messages(self, rows: Sequence[Sequence[Any]], worker_id: str,
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

    def claimed_messages(self, rows: Sequence[Sequence[Any]],
                         worker_id: str) -> list[Message]:
        """:meth:`messages` for the rows a claim returned, in claim order: highest
        priority, then oldest (RETURNING has no order; the ISO strings, all UTC, sort
        like the times they name)."""
        messages = self.messages(rows, worker_id)
        messages.sort(key=lambda m: (-m.priority, m.available_at or ""))
        return messages

    def fail_unreadable(self, row: Sequence[Any], exc: Exception,
                        now: datetime | None = None) -> None:
        from ..models import Job

        job_id, lease = row[0], row[1]
        reason = (f"The job's row cannot be read ({type(exc).__name__}: {exc}); it was "
                  "failed without running. Fix or delete the row.")
        logger.error("Job %s FAILED: %s", job_id, reason)
        now = now or timezone.now()
        error = {**error_dict(exc, 0, "", now), "message": reason, "traceback": "",
                 "exception_class_path": "django_tasks.exceptions.TasksError"}
        # The errors list is replaced: it may be what is malformed.
        Job.objects.using(self.database).filter(pk=job_id, lease=lease).update(
            status=FAILED, finished_at=now, lease="", errors=[error])

    # -- starts and outcomes ------------------------------------------------------------

    def record_starts(self, worker_id: str, starts: Sequence[Start]) -> int:
        """Mark claimed jobs RUNNING (attempt counted), where the lease still holds them."""
        if not starts:
            return 0
        with self.connection.cursor() as cursor:
            if self.vendor == "postgresql":
                cursor.execute(self.sql(RECORD_STARTS_PG),
                               {"worker": worker_id, **starts_params(starts)})
                return cursor.rowcount
            sql = self.sql(RECORD_START)
            cursor.executemany(sql, [
                {"at": self.time(s.at), "worker": worker_id, "id": self.job_id(s.id),
                 "lease": s.lease} for s in starts
            ])
            return cursor.rowcount

    def exchange_pg(self, worker_id: str, statements: tuple[str, str],
                    params: dict[str, Any],
                    starts: Sequence[Start], outcomes: Sequence[Outcome],
                    ) -> tuple[list[Sequence[Any]], list[Applied]]:
        """Run an :func:`exchange_pg` statement (PostgreSQL; the claim alone if there is
        nothing to write); returns the claimed rows and the outcomes written.

        The outcome hooks run in the statement's transaction; if one fails, all of it
        is rolled back and :class:`OutcomeHookFailed` propagates: the caller then makes
        the parts one by one (:meth:`apply_outcomes` fails only the jobs whose hooks
        fail).
        """
        params = {"worker": worker_id, **params, **starts_params(starts),
                  **outcomes_params(outcomes)}
        hooks = hooks_for(outcomes)
        atomic = transaction.atomic(using=self.database) if hooks else nullcontext()
        with atomic, self.connection.cursor() as cursor:
            statement = statements[0 if starts or outcomes else 1]
            cursor.execute(self.sql(statement), params)
            rows = cursor.fetchall()
            claimed = [row[1:] for row in rows if row[0] == "c"]
            applied = [self.applied((r[1], r[2], r[3], r[4], r[9], r[7]))
                       for r in rows if r[0] == "d"]
            if hooks:
                self.run_hooks(applied, hooks)
        if len(hooks) < len(_OUTCOME_HOOKS) and any(a.links for a in applied):
            # An outcome of a workflow step not marked ``linked`` (a bug): move its
            # workflow now, in a transaction of its own, rather than leave it waiting.
            logger.error("Outcomes of workflow steps were written without their hooks; "
                         "running them now: %s", ", ".join(a.id for a in applied if a.links))
            with transaction.atomic(using=self.database):
                self.run_hooks([a for a in applied if a.links], _LINKED_ONLY)
        return claimed, applied

    def claim_ids(self, worker_id: str, lease: str, job_ids: Sequence[str],
                  now: datetime | None = None) -> list[Sequence[Any]]:
        """Claim these jobs under ``lease`` where they are still READY and due; returns
        their rows (MESSAGE_COLUMNS). For brokers that carry ids, not rows."""
        if not job_ids:
            return []
        if now is None and self.vendor != "postgresql":
            now = timezone.now()  # SQLite: one host, one clock
        params: dict[str, Any] = {"worker": worker_id, "lease": lease,
                                  "backend": self.backend_alias, "now": self.time(now)}
        if self.vendor == "postgresql":
            sql = self.sql(CLAIM_IDS_PG)
            params["claim_ids"] = list(job_ids)
        else:
            names = {f"i{n}": self.job_id(i) for n, i in enumerate(job_ids)}
            sql = self.sql(CLAIM_IDS_SQLITE.replace(
                "{ids}", ", ".join(f"%({n})s" for n in names)))
            params.update(names)
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def ready_rows(self, job_ids: Sequence[str]) -> list[tuple[str, str, int, datetime]]:
        """``(id, queue, priority, available_at)`` of those jobs that are READY."""
        from ..models import Job

        if not job_ids:
            return []
        rows = (Job.objects.using(self.database)
                .filter(status=READY, backend=self.backend_alias, pk__in=list(job_ids))
                .values_list("id", "queue_name", "priority", "available_at"))
        return [(str(i), q, p, a) for i, q, p, a in rows]

    def apply_outcomes(self, worker_id: str, outcomes: Sequence[Outcome], *,
                       hooks: bool = True) -> list[Applied]:
        """Write outcomes whose lease still holds the job; returns those written.

        Runs the outcome hooks with what was written, in the same transaction: all of
        it commits, or none of it. A hook that fails (other than by a database outage)
        fails only the jobs it failed on: the batch is written again one outcome at a
        time, and an outcome whose hooks still fail is written as FAILED with the
        hook's error, without hooks (see :meth:`fail_by_hook`).
        """
        if not outcomes:
            return []
        try:
            with transaction.atomic(using=self.database):
                applied = self._write_outcomes(worker_id, outcomes)
                if hooks:
                    self.run_hooks(applied)
            return applied
        except OutcomeHookFailed as failure:
            if len(outcomes) > 1:
                return [a for o in outcomes for a in self.apply_outcomes(worker_id, [o])]
            return self.fail_by_hook(worker_id, outcomes[0], failure)

    def _write_outcomes(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        with self.connection.cursor() as cursor:
            if self.vendor == "postgresql":
                cursor.execute(self.sql(APPLY_OUTCOMES_PG),
                               {"worker": worker_id, **outcomes_params(outcomes)})
                rows = cursor.fetchall()
            else:
                sql = self.sql(APPLY_OUTCOME)
                rows = []
                for o in outcomes:
                    cursor.execute(sql, self._outcome_params(worker_id, o))
                    rows.extend(cursor.fetchall())
        return [self.applied(row) for row in rows]

    def fail_by_hook(self, worker_id: str, outcome: Outcome,
                     failure: OutcomeHookFailed) -> list[Applied]:
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
            return applied
        except OutcomeHookFailed:
            return self.apply_outcomes(worker_id, [failed], hooks=False)

    def _outcome_params(self, worker_id: str, o: Outcome) -> dict[str, Any]:
        rv = o.return_value
        return {
            "status": o.status, "return_value": None if rv is None else dumps(rv),
            "error": dumps(o.error) if o.error else None,
            "finished_at": self.time(o.finished_at), "retry_at": self.time(o.retry_at),
            "started_at": self.time(o.started_at), "worker": worker_id,
            "id": self.job_id(o.id), "lease": o.lease, "now": self.time(timezone.now()),
        }

    @staticmethod
    def applied(row: Sequence[Any]) -> Applied:
        job_id, status, task_path, queue_name, attempts, links = row
        if isinstance(links, str):  # SQLite returns JSON as text
            links = json.loads(links)
        return Applied(job_id_str(job_id), status, task_path, queue_name, attempts, links)

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
        with self.connection.cursor() as cursor:
            cursor.executemany(self.sql(GIVE_BACK), [
                {"id": self.job_id(m.id), "lease": m.lease} for m in messages
            ])
            released = cursor.rowcount
        if released < len(messages):
            from ..models import Job

            leases = {m.id: m.lease for m in messages}
            rows = (Job.objects.using(self.database)
                    .filter(pk__in=list(leases), status=CLAIMED, cancellation__isnull=False)
                    .values_list("pk", "lease", "task_path"))
            self.apply_outcomes("", [cancelled_outcome(str(pk), lease, path)
                                     for pk, lease, path in rows if leases.get(str(pk)) == lease])
        return released

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
        params = {"progress": dumps(progress), "id": self.job_id(job_id), "lease": lease}
        return self._side_write(PROGRESS, params)

    def _side_write(self, statement: str, params: dict[str, Any]) -> bool:
        own = self.connection
        if self.vendor == "sqlite" and own.in_atomic_block:
            with own.cursor() as cursor:
                cursor.execute(self.sql(statement), params)
                return cursor.rowcount > 0
        written = self.on_side(lambda cursor: (cursor.execute(self.sql(statement), params),
                                               cursor.rowcount)[1])
        if not written and own.in_atomic_block:
            # The row may exist only in the caller's own uncommitted transaction (a test
            # wrapped in one, a job enqueued and run inline): write it there.
            with own.cursor() as cursor:
                cursor.execute(self.sql(statement), params)
                return cursor.rowcount > 0
        return written > 0

    def on_side(self, run: Callable[[Any], Any]) -> Any:
        """``run(cursor)`` on this thread's side connection to the store's database
        (:mod:`django_tasks.jobs.side`)."""
        return on_side(self.database, run)

    # -- operator actions ------------------------------------------------------------------

    def retry_failed(self, job_ids: Sequence[Any]) -> list[str]:
        """Make these FAILED jobs READY for one more attempt (errors kept); returns their ids.

        A unique job is not retried while another job holds its key (of several with
        one key, only the newest is). A workflow step that never ran (a step before it
        failed) is not retried: the input it waited for does not exist.
        """
        from django.db.models import F, Q

        from ..models import Job

        jobs = (Job.objects.using(self.database).failed().filter(pk__in=list(job_ids))
                .exclude(Q(attempts=0) & Q(links__has_key="inputs")))
        with transaction.atomic(using=self.database):
            rows = list(jobs.select_for_update().order_by("-enqueued_at")
                        .values_list("id", "unique_key"))
            changes = {"status": READY, "available_at": self.now(), "finished_at": None,
                       "worker_id": "", "lease": "", "max_attempts": F("attempts") + 1}
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
        return ids


def outcomes_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Parameters of APPLY_OUTCOMES_PG."""
    return {
        "outcome_ids": [o.id for o in outcomes],
        "outcomes": dumps([
            {"id": o.id, "lease": o.lease, "status": o.status, "return_value": o.return_value,
             "error": o.error, "finished_at": o.finished_at, "retry_at": o.retry_at,
             "retry_delay": o.retry_delay,
             "started_at": o.started_at}
            for o in outcomes
        ]),
    }


def starts_params(starts: Sequence[Start]) -> dict[str, Any]:
    """Parameters of RECORD_STARTS_PG (``worker`` aside)."""
    return {"start_ids": [s.id for s in starts],
            "starts": dumps([{"id": s.id, "lease": s.lease, "at": s.at} for s in starts])}


def _iso(value: Any) -> str | None:
    if type(value) is datetime and value.tzinfo is not None:  # PostgreSQL's: as is
        return value.isoformat()
    dt = as_datetime(value)
    return dt.isoformat() if dt is not None else None
