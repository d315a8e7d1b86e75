"""Job rows and the worker registry: what every broker shares.

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
  (:func:`django_tasks.outcomes.failure_outcome`);
- liveness (heartbeats, expiry) is judged by the database's clock, never a host's.

SQL that differs between vendors is kept as named statements with named parameters.
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
from typing import Any, NamedTuple

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from .cancellation import Cancelling, cancelled_outcome
from .exceptions import OutcomeHookFailed, WorkerLost
from .ids import job_id_str
from .messages import APPLIED_COLUMNS, Applied, Message, Outcome, Start
from .outcomes import as_datetime, error_dict, failure_outcome, send_failed, task_or_none
from .serialization import dumps
from .side import on_side
from .states import ACTIVE_SQL, CANCELLED, CLAIMED, FAILED, HELD, HELD_SQL, READY, RUNNING

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


class RescueCounts(NamedTuple):
    given_back: int
    retried: int
    failed: int


#: Columns a claim returns, in this order; :meth:`JobStore.message` reads them.
MESSAGE_COLUMNS = (
    "id", "lease", "task_path", "queue_name", "priority", "backend", "args", "kwargs",
    "attempts", "max_attempts", "worker_ids", "errors", "enqueued_at", "started_at",
    "run_after", "available_at", "workflow_id",
)
#: Columns an outcome write returns (an :class:`Applied`).

FRESH = f"status = '{CLAIMED}'"  # a job whose start was never recorded

# -- statements (vendor fragments in braces, parameters by name) --------------------------

RECORD_START = (
    "UPDATE {table} SET status = '" + RUNNING + "', attempts = attempts + 1, "
    "started_at = COALESCE(started_at, %(at)s), last_attempted_at = %(at)s, "
    "worker_ids = {append_worker} "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = '" + CLAIMED + "'"
)
# One outcome. A job that started and finished between two writes has no recorded
# start: the outcome counts its attempt (status still CLAIMED tells), unless it never
# ran (a cancelled job dropped from a worker's buffer: CANCELLED without an error). A job asked
# to cancel (``cancellation`` set) ends CANCELLED whatever its attempt did, with the
# cancellation as its last error (or the outcome's own, when it is CANCELLED already:
# the pool's terminate names the kill: its message is then prefixed with who asked).
RAN = (f"status = '{CLAIMED}' AND (%(status)s <> '{CANCELLED}' "
       "OR %(error)s IS NOT NULL)")
APPLY_OUTCOME = (
    "UPDATE {table} SET "
    "status = CASE WHEN cancellation IS NULL THEN %(status)s ELSE '" + CANCELLED + "' END, "
    "return_value = CASE WHEN cancellation IS NULL THEN {json_value} ELSE NULL END, "
    "errors = CASE WHEN cancellation IS NULL OR %(status)s = '" + CANCELLED + "' THEN "
    "(CASE WHEN %(error)s IS NULL THEN {cancelled_or_errors} ELSE {append_outcome_error} END) "
    "ELSE {append_cancellation} END, "
    "finished_at = CASE WHEN cancellation IS NULL THEN %(finished_at)s "
    "ELSE COALESCE(%(finished_at)s, %(now)s) END, "
    "available_at = COALESCE(%(retry_at)s, available_at), "
    "attempts = CASE WHEN " + RAN + " THEN attempts + 1 ELSE attempts END, "
    "started_at = COALESCE(started_at, %(started_at)s), "
    "last_attempted_at = CASE WHEN " + RAN + " THEN %(started_at)s "
    "ELSE last_attempted_at END, "
    "worker_ids = CASE WHEN " + RAN + " THEN {append_worker} ELSE worker_ids END, "
    "lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status IN " + HELD_SQL + " "
    # Nothing becomes CANCELLED unless cancelling it was asked for.
    "AND (%(status)s <> '" + CANCELLED + "' OR cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(APPLIED_COLUMNS)
)
# Many outcomes in one statement (PostgreSQL): also the ``done`` step of the database
# broker's exchange. Cancellation as in APPLY_OUTCOME.
RAN_PG = (f"j.status = '{CLAIMED}' AND (o.status <> '{CANCELLED}' "
          "OR (o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null'))")
APPLY_OUTCOMES_PG = (
    "UPDATE {table} AS j SET "
    "status = CASE WHEN j.cancellation IS NULL THEN o.status ELSE '" + CANCELLED + "' END, "
    "return_value = CASE WHEN j.cancellation IS NOT NULL "
    "OR jsonb_typeof(o.return_value) = 'null' THEN NULL ELSE o.return_value END, "
    "errors = CASE "
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND j.cancellation IS NULL THEN j.errors || jsonb_build_array(o.error) "
    # The outcome says how a cancelled job ended; the cancellation, who asked.
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND o.status = '" + CANCELLED + "' THEN j.errors || jsonb_build_array(o.error || "
    "jsonb_build_object('message', concat(j.cancellation->>'message', ': ', "
    "o.error->>'message'))) "
    "WHEN j.cancellation IS NULL OR jsonb_typeof(j.cancellation) = 'null' THEN j.errors "
    "WHEN o.error IS NULL OR jsonb_typeof(o.error) = 'null' "
    "OR o.status = '" + CANCELLED + "' THEN j.errors || jsonb_build_array(j.cancellation) "
    "ELSE j.errors || jsonb_build_array(o.error, j.cancellation) END, "
    "finished_at = CASE WHEN j.cancellation IS NULL THEN o.finished_at "
    "ELSE COALESCE(o.finished_at, statement_timestamp()) END, "
    "available_at = CASE WHEN o.retry_delay IS NOT NULL "
    "THEN statement_timestamp() + o.retry_delay * interval '1 second' "
    "ELSE COALESCE(o.retry_at, j.available_at) END, "
    "attempts = CASE WHEN " + RAN_PG + " THEN j.attempts + 1 ELSE j.attempts END, "
    "started_at = COALESCE(j.started_at, o.started_at), "
    "last_attempted_at = CASE WHEN " + RAN_PG + " THEN o.started_at "
    "ELSE j.last_attempted_at END, "
    "worker_ids = CASE WHEN " + RAN_PG + " THEN j.worker_ids || "
    "jsonb_build_array(%(worker)s::text) ELSE j.worker_ids END, "
    "lease = '' "
    "FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS o(id uuid, lease text, status text, "
    "return_value jsonb, error jsonb, finished_at timestamptz, retry_at timestamptz, "
    "retry_delay float8, "
    "started_at timestamptz) "
    # ``j.id = ANY(ids)``: the planner then fetches the rows by primary key. Joined on
    # the recordset alone (estimated at 100 rows) it scanned the held-jobs index, whose
    # dead entries grow with every job done until VACUUM: 3 ms per round trip after
    # 4,000 jobs, 4 ms after 16,000.
    "WHERE j.id = ANY(%(outcome_ids)s::uuid[]) AND j.id = o.id AND j.lease = o.lease "
    "AND j.status IN " + HELD_SQL + " "
    "AND (o.status <> '" + CANCELLED + "' OR j.cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(f"j.{c}" for c in APPLIED_COLUMNS)
)
RECORD_STARTS_PG = (
    "UPDATE {table} AS j SET status = '" + RUNNING + "', attempts = j.attempts + 1, "
    "started_at = COALESCE(j.started_at, s.at), last_attempted_at = s.at, "
    "worker_ids = j.worker_ids || jsonb_build_array(%(worker)s::text) "
    "FROM jsonb_to_recordset(%(starts)s::jsonb) AS s(id uuid, lease text, at timestamptz) "
    "WHERE j.id = ANY(%(start_ids)s::uuid[]) AND j.id = s.id AND j.lease = s.lease "
    "AND j.status = '" + CLAIMED + "' RETURNING 1"
)
# Claimed, never started: READY again, as if never claimed. Not a job asked to cancel:
# that one is written CANCELLED through the outcome path (its workflow moves on).
GIVE_BACK = (
    "UPDATE {table} SET status = '" + READY + "', worker_id = '', lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = '" + CLAIMED + "' "
    "AND cancellation IS NULL"
)
GIVE_BACK_ALL = (
    "UPDATE {table} SET status = '" + READY + "', worker_id = '', lease = '' "
    "WHERE worker_id = %(worker)s AND lease <> '' AND status = '" + CLAIMED + "' "
    "AND cancellation IS NULL"
)
# Claim jobs by id (a broker that carries ids, such as Redis, chose them): only rows
# still READY and due change, so a duplicated or stale message claims nothing. The
# rows are first locked by primary key alone (in id order: no deadlock between
# claimers), and the conditions are checked on what was locked: with the conditions in
# the UPDATE itself, statistics that are stale after a burst of enqueues (few READY
# rows) made the planner walk the claim index with the ids as a filter, 5 ms for 9
# jobs among 20,000 ready ones; this way it is 0.3 ms whatever the statistics say.
CLAIM_IDS_LOCK_PG = (
    "locked AS MATERIALIZED (SELECT id, status, backend, available_at FROM {table} "
    "WHERE id = ANY(%(claim_ids)s::uuid[]) ORDER BY id FOR UPDATE)"
)
CLAIM_IDS_UPDATE_PG = (
    "UPDATE {table} AS j SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s FROM locked AS l "
    "WHERE j.id = l.id AND l.status = '" + READY + "' AND l.backend = %(backend)s "
    "AND l.available_at <= COALESCE(%(now)s::timestamptz, statement_timestamp()) "
    "RETURNING " + ", ".join(f"j.{c}" for c in MESSAGE_COLUMNS)
)
CLAIM_IDS_PG = "WITH " + CLAIM_IDS_LOCK_PG + " " + CLAIM_IDS_UPDATE_PG
CLAIM_IDS_SQLITE = (
    "UPDATE {table} SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN ({ids}) AND status = '" + READY + "' AND backend = %(backend)s "
    "AND available_at <= %(now)s "
    "RETURNING " + ", ".join(MESSAGE_COLUMNS)
)
RUNNING_OF = (
    "SELECT " + ", ".join(MESSAGE_COLUMNS) + ", last_attempted_at FROM {table} "
    "WHERE worker_id = %(worker)s AND lease <> '' AND status = '" + RUNNING + "'"
)
# Unique jobs. The conflict target names the partial unique index
# ``django_tasks_job_unique`` (its columns and predicate): a job whose key an active job
# holds is not inserted, and the caller's transaction goes on unharmed (an INSERT that
# raised IntegrityError would abort it on PostgreSQL). A conflicting row of a
# transaction still in flight makes the INSERT wait for it: committed, it conflicts;
# rolled back, the key is free and this INSERT goes ahead.
UNIQUE_PREDICATE = "status IN " + ACTIVE_SQL + " AND NOT (unique_key = '')"
ON_CONFLICT_UNIQUE = " ON CONFLICT (backend, unique_key) WHERE " + UNIQUE_PREDICATE + " DO NOTHING"
# The job holding a key: the active one (UNIQUE_ACTIVE), or the last one that finished
# among those enqueued at or after ``since`` (UNIQUE_RECENT, for ``unique_for``). The
# predicates are spelled as the partial indexes' are: SQLite matches them as text.
UNIQUE_ACTIVE = (
    "SELECT * FROM {table} WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND " + UNIQUE_PREDICATE
)
UNIQUE_RECENT = (
    "SELECT * FROM {table} WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND NOT (unique_key = '') AND NOT (status IN " + ACTIVE_SQL + ") "
    "AND enqueued_at >= %(since)s ORDER BY enqueued_at DESC LIMIT 1"
)
PROGRESS = (
    "UPDATE {table} SET progress = {json_progress} "
    "WHERE id = %(id)s AND (%(lease)s = '' OR lease = %(lease)s) AND status IN " + HELD_SQL
)



def exchange_pg(claim: str, *ctes: str) -> tuple[str, str]:
    """The worker's whole round trip on PostgreSQL as one statement, ``claim`` being the
    claim's UPDATE: one round trip and one commit however many starts, outcomes and
    claims (data-modifying CTEs always run to completion). A claim's sub-select sees
    the snapshot from before the CTEs, which only touch held rows. Rows: ``'c'`` and
    MESSAGE_COLUMNS for a claimed job, ``'d'`` and APPLIED_COLUMNS at positions
    1-4, 9 and 7 (``links``, in the jsonb column ``args``) for an outcome written.
    ``ctes`` (``name AS (...)``) come before the claim, which may read them.

    Two statements: the whole round trip, and the claim alone for a round trip with no
    start or outcome to write (an idle worker woken by an enqueue). Without the empty
    parts the claim took 341 us instead of 580 us (the Redis broker's) and 412 us
    instead of 750 us (the database broker's): planning them and running them on empty
    JSON both cost, and this round trip is on the path from enqueue to start. A busy
    worker's round trips keep the one statement: leaving out whichever part was empty
    in every round trip measured no faster (database broker, alternating drains of
    20,000 jobs: 3,754 and 3,673 vs 3,823 and 3,828 jobs/s).
    """
    head = "WITH " + "".join(cte + ", " for cte in ctes) + "claimed AS (" + claim + ") "
    claim_only = head + "SELECT 'c', " + ", ".join(MESSAGE_COLUMNS) + " FROM claimed"
    whole = (
        "WITH started AS (" + RECORD_STARTS_PG + "), done AS (" + APPLY_OUTCOMES_PG + "), "
        + "".join(cte + ", " for cte in ctes) + "claimed AS (" + claim + ") "
        "SELECT 'c', " + ", ".join(MESSAGE_COLUMNS) + " FROM claimed "
        "UNION ALL SELECT 'd', id, status, task_path, queue_name, NULL, NULL, links, NULL, "
        "attempts, " + ", ".join(["NULL"] * (len(MESSAGE_COLUMNS) - 9)) + " FROM done"
    )
    return whole, claim_only


_VENDORS: dict[str, dict[str, str]] = {
    "postgresql": {
        "append_worker": "worker_ids || jsonb_build_array(%(worker)s::text)",
        "append_error": "errors || jsonb_build_array(%(error)s::jsonb)",
        "json_value": "%(return_value)s::jsonb",
        "json_progress": "%(progress)s::jsonb",
        "now": "SELECT statement_timestamp()",
        "json_param": "%(error)s::jsonb",
        "append_outcome_error": "errors || jsonb_build_array(CASE WHEN cancellation IS NULL "
                                "THEN %(error)s::jsonb ELSE %(error)s::jsonb || "
                                "jsonb_build_object('message', concat(cancellation->>'message', "
                                "': ', %(error)s::jsonb->>'message')) END)",
        "cancelled_or_errors": "CASE WHEN cancellation IS NULL THEN errors "
                               "ELSE errors || jsonb_build_array(cancellation) END",
        "append_cancellation": "CASE WHEN %(error)s IS NULL THEN errors ELSE errors || "
                               "jsonb_build_array(%(error)s::jsonb) END || "
                               "jsonb_build_array(cancellation)",
    },
    "sqlite": {
        "append_worker": "json_insert(worker_ids, '$[#]', %(worker)s)",
        "append_error": "json_insert(errors, '$[#]', json(%(error)s))",
        "json_value": "%(return_value)s",
        "json_progress": "%(progress)s",
        "now": "",  # one host: the database's clock is this host's
        "json_param": "json(%(error)s)",
        "append_outcome_error": "json_insert(errors, '$[#]', CASE WHEN cancellation IS NULL "
                                "THEN json(%(error)s) ELSE json_set(json(%(error)s), "
                                "'$.message', json_extract(cancellation, '$.message') || ': ' "
                                "|| json_extract(%(error)s, '$.message')) END)",
        # A CANCELLED outcome without an error (dropped unstarted): the cancellation.
        "cancelled_or_errors": "CASE WHEN cancellation IS NULL THEN errors "
                               "ELSE json_insert(errors, '$[#]', json(cancellation)) END",
        "append_cancellation": "json_insert(CASE WHEN %(error)s IS NULL THEN errors "
                               "ELSE json_insert(errors, '$[#]', json(%(error)s)) END, "
                               "'$[#]', json(cancellation))",
    },
}


class JobStore(Cancelling):
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
        from .models import Job

        fragments = _VENDORS.get(self.vendor)
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
        from .models import Job

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
        query = _VENDORS.get(self.vendor, {}).get("now")
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
        from .models import Job

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
        from .models import Job

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
            from .models import Job

            leases = {m.id: m.lease for m in messages}
            rows = (Job.objects.using(self.database)
                    .filter(pk__in=list(leases), status=CLAIMED, cancellation__isnull=False)
                    .values_list("pk", "lease", "task_path"))
            self.apply_outcomes("", [cancelled_outcome(str(pk), lease, path)
                                     for pk, lease, path in rows if leases.get(str(pk)) == lease])
        return released

    def held_by(self, worker_id: str) -> list[tuple[str, str]]:
        """``(id, lease)`` of every job ``worker_id`` holds (claimed or running)."""
        from .models import Job

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
        (:mod:`django_tasks.side`)."""
        return on_side(self.database, run)

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
        with self.connection.cursor() as cursor:
            if ids is None:
                cursor.execute(self.sql(GIVE_BACK_ALL), {"worker": worker_id})
                given_back = cursor.rowcount
            else:
                given_back = 0
            cursor.execute(self.sql(RUNNING_OF), {"worker": worker_id})
            rows = cursor.fetchall()
        if ids is not None:
            held = [(i, lease) for i, lease in self.held_by(worker_id) if i in ids]
            given_back = self.give_back([Start(i, lease, "") for i, lease in held])
            rows = [row for row in rows if job_id_str(row[0]) in ids]
        last_attempted = {job_id_str(row[0]): row[len(MESSAGE_COLUMNS)] for row in rows}
        outcomes, messages = self._cancelled_claims(worker_id, ids), {}
        for message in self.messages(rows, worker_id, now):
            message.attempt -= 1  # the attempt that was running is already counted
            message.worker_ids.pop()
            started = as_datetime(last_attempted[message.id])
            ran = (now - started).total_seconds() if started else 0.0
            outcome = failure_outcome(message, WorkerLost(reason), worker_id, now=now,
                                      task=task_or_none(message.task_path), duration=ran,
                                      notify=False)
            outcomes.append(outcome)
            messages[message.id] = message
        applied = self.apply_outcomes(worker_id, outcomes)
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
        from .models import Job, Worker

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
        holders = set(
            Job.objects.using(self.database).held().values_list("worker_id", flat=True)
            .distinct()
        )
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
        from .exceptions import WorkerIdInUse
        from .models import Worker

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

    def heartbeat(self, worker_id: str) -> bool:
        """Record that ``worker_id`` is alive now (database clock); False if declared dead."""
        from .models import Worker

        return bool(
            Worker.objects.using(self.database).running().filter(id=worker_id)
            .update(last_heartbeat_at=self.now())
        )

    def unregister_worker(self, worker_id: str, reason: str = "shutdown") -> None:
        """Mark ``worker_id`` stopped; whatever it still holds becomes rescuable at once."""
        from .models import Worker

        Worker.objects.using(self.database).filter(id=worker_id).update(
            stopped_at=self.now(), stop_reason=reason[:200]
        )

    def prune_workers(self, before: datetime) -> int:
        """Delete the rows of workers not heard from since ``before`` that hold no job."""
        from .models import Worker

        return Worker.objects.using(self.database).prune(before)

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` whose rows exist."""
        from .models import Job

        return {str(pk) for pk in Job.objects.using(self.database)
                .filter(pk__in=list(job_ids)).values_list("pk", flat=True)}

    def declare_dead(self, worker_id: str, reason: str, now: datetime) -> None:
        from .models import Worker

        Worker.objects.using(self.database).running().filter(id=worker_id).update(
            stopped_at=now, stop_reason=reason[:200]
        )

    # -- operator actions ------------------------------------------------------------------

    def retry_failed(self, job_ids: Sequence[Any]) -> list[str]:
        """Make these FAILED jobs READY for one more attempt (errors kept); returns their ids.

        A unique job is not retried while another job holds its key (of several with
        one key, only the newest is). A workflow step that never ran (a step before it
        failed) is not retried: the input it waited for does not exist.
        """
        from django.db.models import F, Q

        from .models import Job

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
