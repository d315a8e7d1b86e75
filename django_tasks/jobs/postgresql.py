"""The job store on PostgreSQL: every statement it runs, and the engine that runs them.

Where a job is claimed: :data:`CLAIM_READY` (the database broker: the job table is the
queue) and :data:`CLAIM_IDS` (a broker that carries ids, such as Redis), alone or as the
last part of the worker's round trip in one statement (:data:`EXCHANGE_READY`,
:data:`EXCHANGE_IDS`), which also records starts (:data:`RECORD_STARTS`) and writes
outcomes (:data:`APPLY_OUTCOMES`). Statements SQLite runs as written too are in
:mod:`django_tasks.jobs.portable`.

Parameters are named (``%(name)s``); lists travel as arrays (``%(ids)s::uuid[]``) and
batches as one JSON document (``jsonb_to_recordset``), so a statement's text never
depends on how many rows it touches. Times a worker does not give are the database's
(``statement_timestamp()``): the clock every worker claims by.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from ..exceptions import OutcomeHookFailed
from ..results import as_datetime
from ..serialization import dumps
from .engine import Engine, RoundTrip
from .messages import APPLIED_COLUMNS, Applied, ByIds, ByQueues, NewJob, Outcome, Start
from .pgtext import array, copy_rows, new_jobs
from .portable import INSERT_COLUMNS, INSERTED, ON_CONFLICT_UNIQUE, reserve_slots
from .rows import MESSAGE_COLUMNS, ExchangeRow, MessageRow

__all__ = ["PostgreSQL", "PostgresListener"]

NOW = "SELECT statement_timestamp()"
# Rate limits: slots by the database's clock, in seconds since the epoch.
RESERVE_SLOTS = reserve_slots("EXTRACT(EPOCH FROM statement_timestamp())::float8",
                              "GREATEST", "LEAST", "FLOOR({})::int")

# -- starts and outcomes -------------------------------------------------------------------

# Many starts in one statement.
RECORD_STARTS = (
    "UPDATE \"django_tasks_job\" AS j SET status = 'RUNNING', attempts = j.attempts + 1, "
    "started_at = COALESCE(j.started_at, s.at), last_attempted_at = s.at, "
    "worker_ids = j.worker_ids || jsonb_build_array(%(worker)s::text) "
    "FROM jsonb_to_recordset(%(starts)s::jsonb) AS s(id uuid, lease text, at timestamptz) "
    "WHERE j.id = ANY(%(start_ids)s::uuid[]) AND j.id = s.id AND j.lease = s.lease "
    "AND j.status = 'CLAIMED' RETURNING 1"
)
# Many outcomes in one statement. A job that started and finished between two writes
# has no recorded start: the outcome counts its attempt (status still CLAIMED tells),
# unless it never ran (a cancelled job dropped from a worker's buffer: CANCELLED without
# an error). A job asked to cancel (``cancellation`` set) ends CANCELLED whatever its
# attempt did, with the cancellation as its last error (or the outcome's own, when it
# is CANCELLED already: the pool's terminate names the kill: its message is then
# prefixed with who asked). Nothing becomes CANCELLED unless cancelling it was asked for.
_RAN = ("j.status = 'CLAIMED' AND (o.status <> 'CANCELLED' "
        "OR (o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null'))")
APPLY_OUTCOMES = (
    "UPDATE \"django_tasks_job\" AS j SET "
    "status = CASE WHEN j.cancellation IS NULL THEN o.status ELSE 'CANCELLED' END, "
    "return_value = CASE WHEN j.cancellation IS NOT NULL "
    "OR jsonb_typeof(o.return_value) = 'null' THEN NULL ELSE o.return_value END, "
    "errors = CASE "
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND j.cancellation IS NULL THEN j.errors || jsonb_build_array(o.error) "
    # The outcome says how a cancelled job ended; the cancellation, who asked.
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND o.status = 'CANCELLED' THEN j.errors || jsonb_build_array(o.error || "
    "jsonb_build_object('message', concat(j.cancellation->>'message', ': ', "
    "o.error->>'message'))) "
    "WHEN j.cancellation IS NULL OR jsonb_typeof(j.cancellation) = 'null' THEN j.errors "
    "WHEN o.error IS NULL OR jsonb_typeof(o.error) = 'null' "
    "OR o.status = 'CANCELLED' THEN j.errors || jsonb_build_array(j.cancellation) "
    "ELSE j.errors || jsonb_build_array(o.error, j.cancellation) END, "
    "finished_at = CASE WHEN j.cancellation IS NULL THEN o.finished_at "
    "ELSE COALESCE(o.finished_at, statement_timestamp()) END, "
    # A retry's delay counts from the write, by the database's clock.
    "available_at = CASE WHEN o.retry_delay IS NOT NULL "
    "THEN statement_timestamp() + o.retry_delay * interval '1 second' "
    "ELSE COALESCE(o.retry_at, j.available_at) END, "
    "attempts = CASE WHEN " + _RAN + " THEN j.attempts + 1 ELSE j.attempts END, "
    "started_at = COALESCE(j.started_at, o.started_at), "
    "last_attempted_at = CASE WHEN " + _RAN + " THEN o.started_at "
    "ELSE j.last_attempted_at END, "
    "worker_ids = CASE WHEN " + _RAN + " THEN j.worker_ids || "
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
    "AND j.status IN ('CLAIMED', 'RUNNING') "
    "AND (o.status <> 'CANCELLED' OR j.cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(f"j.{c}" for c in APPLIED_COLUMNS)
)

# -- claiming ------------------------------------------------------------------------------

# A condition that is always true and turns ``synchronous_commit`` off for the
# statement's transaction alone (an InitPlan: evaluated once, before any row). Its
# commit then returns without waiting for the WAL to reach the disk; see its uses.
NO_DISK_WAIT = "(SELECT set_config('synchronous_commit', 'off', true)) <> ''"

# The best ready jobs of some queues (the database broker). Each queue is walked in its
# own index order and the heads merged (``CROSS JOIN LATERAL``), so a claim reads about
# LIMIT rows per queue whatever the other queues hold, and the plan needs no planner
# settings: with the queue fixed by equality, the index order *is* the claim order,
# even when the table's statistics are stale right after a burst of enqueues.
# ``FOR UPDATE SKIP LOCKED``: concurrent claimers take different jobs, never wait.
# ``id = ANY(ARRAY(...))``: the ids are chosen first (an InitPlan), then the rows are
# updated by primary key. As ``id IN (...)`` the planner could turn it into a semi-join
# and, believing the table nearly empty (statistics from before a burst of enqueues),
# walk the whole table by primary key testing each row: 10 ms per claim at 20,000 jobs.
_CLAIM_READY_ROWS = (
    "UPDATE \"django_tasks_job\" SET status = 'CLAIMED', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id = ANY(ARRAY(SELECT c.id FROM unnest(%(queues)s::text[]) AS q(name) "
    "CROSS JOIN LATERAL (SELECT id, priority, available_at FROM \"django_tasks_job\" "
    "WHERE status = 'READY' AND backend = %(backend)s AND queue_name = q.name "
    "AND available_at <= COALESCE(%(now)s::timestamptz, statement_timestamp()) "
    "ORDER BY priority DESC, available_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS c "
    "ORDER BY c.priority DESC, c.available_at LIMIT %(limit)s)) "
)
_RETURNING_MESSAGES = "RETURNING " + ", ".join(MESSAGE_COLUMNS)
CLAIM_READY = _CLAIM_READY_ROWS + _RETURNING_MESSAGES
# The claim alone (an idle worker woken by an enqueue: nothing else to write) commits
# without waiting for its WAL to reach the disk (``synchronous_commit`` off for this
# transaction only, set by the statement itself: an InitPlan, evaluated once).
# It is on the path from enqueue to start: 0.40 ms from the producer's commit to the
# start instead of 0.65 (medians, docs/performance.md). What it can cost: a PostgreSQL
# crash (not a restart, which writes everything) before any later commit reaches the
# disk (the worker's own start record follows within START_RECORD_LAG) loses the claim,
# and the job may run twice; docs/reliability.md lists it in the duplicate window.
# Nothing is lost: the row is READY again. The round trip that writes starts or
# outcomes stays synchronous, and flushes this claim's WAL with its own.
_NO_DISK_WAIT = "AND " + NO_DISK_WAIT + " "
CLAIM_READY_ALONE = _CLAIM_READY_ROWS + _NO_DISK_WAIT + _RETURNING_MESSAGES
# Jobs by id (a broker that carries ids, such as Redis, chose them): only rows still
# READY and due change, so a duplicated or stale message claims nothing. The rows are
# first locked by primary key alone (in id order: no deadlock between claimers), and
# the conditions are checked on what was locked: with the conditions in the UPDATE
# itself, statistics that are stale after a burst of enqueues (few READY rows) made the
# planner walk the claim index with the ids as a filter, 5 ms for 9 jobs among 20,000
# ready ones; this way it is 0.3 ms whatever the statistics say.
_LOCKED = (
    "locked AS MATERIALIZED (SELECT id, status, backend, available_at "
    "FROM \"django_tasks_job\" "
    "WHERE id = ANY(%(claim_ids)s::uuid[]) ORDER BY id FOR UPDATE SKIP LOCKED)"
)
_CLAIM_LOCKED_ROWS = (
    "UPDATE \"django_tasks_job\" AS j SET status = 'CLAIMED', worker_id = %(worker)s, "
    "lease = %(lease)s FROM locked AS l "
    "WHERE j.id = l.id AND l.status = 'READY' AND l.backend = %(backend)s "
    "AND l.available_at <= COALESCE(%(now)s::timestamptz, statement_timestamp()) "
)
_RETURNING_LOCKED = "RETURNING " + ", ".join(f"j.{c}" for c in MESSAGE_COLUMNS)
_CLAIM_LOCKED = _CLAIM_LOCKED_ROWS + _RETURNING_LOCKED
CLAIM_IDS = "WITH " + _LOCKED + " " + _CLAIM_LOCKED
# Alone, for a broker that recovers a claim a crash loses (ByIds.no_disk_wait: Redis's
# reconcile, RabbitMQ's acknowledgements held until a later commit waited for the disk),
# it does not wait for the disk either, as CLAIM_READY_ALONE.
CLAIM_IDS_ALONE = "WITH " + _LOCKED + " " + _CLAIM_LOCKED_ROWS + _NO_DISK_WAIT + _RETURNING_LOCKED

# -- the worker's round trip in one statement ----------------------------------------------

# Starts, outcomes and the claim in one statement: one round trip and one commit however
# many there are of each (data-modifying CTEs always run to completion). The claim's
# sub-select sees the snapshot from before the CTEs, which only touch held rows. Rows
# are ExchangeRows: 'c' for a job claimed, 'd' for an outcome written, each column
# meaning the same in both kinds (NULL where a kind has none).
#
# A round trip with no start or outcome to write (an idle worker woken by an enqueue)
# runs the claim alone (CLAIM_READY, CLAIM_IDS): without the empty parts the claim took
# 341 us instead of 580 us (the Redis broker's) and 412 us instead of 750 us (the
# database broker's): planning them and running them on empty JSON both cost, and this
# round trip is on the path from enqueue to start. A busy worker's round trips keep the
# one statement: leaving out whichever part was empty in every round trip measured no
# faster (database broker, alternating drains of 20,000 jobs: 3,754 and 3,673 vs 3,823
# and 3,828 jobs/s).
_ROW = ExchangeRow._fields[1:]
_CLAIMED_ROWS = ("SELECT 'c', " + ", ".join(c if c in MESSAGE_COLUMNS else "NULL" for c in _ROW)
                 + " FROM claimed")
_DONE_ROWS = ("SELECT 'd', " + ", ".join(c if c in APPLIED_COLUMNS else "NULL" for c in _ROW)
              + " FROM done")
_WRITES = "WITH started AS (" + RECORD_STARTS + "), done AS (" + APPLY_OUTCOMES + "), "
EXCHANGE_READY = (
    _WRITES + "claimed AS (" + CLAIM_READY + ") " + _CLAIMED_ROWS + " UNION ALL " + _DONE_ROWS
)
EXCHANGE_IDS = (
    _WRITES + _LOCKED + ", claimed AS (" + _CLAIM_LOCKED + ") "
    + _CLAIMED_ROWS + " UNION ALL " + _DONE_ROWS
)

# -- progress, cancelling, workflows -------------------------------------------------------

PROGRESS = (
    "UPDATE \"django_tasks_job\" SET progress = %(progress)s::jsonb "
    "WHERE id = %(id)s AND (%(lease)s = '' OR lease = %(lease)s) "
    "AND status IN ('CLAIMED', 'RUNNING')"
)
# Cancelling: a job not started is CANCELLED at once (returns Applied's columns, for
# the outcome hooks); a held one is marked, and its outcome is then written CANCELLED.
CANCEL_UNHELD = (
    "UPDATE \"django_tasks_job\" SET status = 'CANCELLED', finished_at = %(now)s, "
    "errors = errors || jsonb_build_array(%(error)s::jsonb), "
    "cancellation = %(error)s::jsonb, lease = '' "
    "WHERE id = ANY(%(ids)s::uuid[]) AND backend = %(backend)s "
    "AND status IN ('READY', 'WAITING') "
    "RETURNING " + ", ".join(APPLIED_COLUMNS)
)
CANCEL_HELD = (
    "UPDATE \"django_tasks_job\" SET cancellation = %(error)s::jsonb "
    "WHERE id = ANY(%(ids)s::uuid[]) AND backend = %(backend)s "
    "AND status IN ('CLAIMED', 'RUNNING') AND lease <> '' "
    "AND cancellation IS NULL "
    "RETURNING id"
)
# A workflow step whose input failed: FAILED without running; its links, to go on down.
FAIL_WAITING = (
    "UPDATE \"django_tasks_job\" SET status = 'FAILED', finished_at = %(now)s, "
    "errors = errors || jsonb_build_array(%(error)s::jsonb) "
    "WHERE id = %(id)s AND status = 'WAITING' RETURNING links"
)

# -- bulk enqueue --------------------------------------------------------------------------

# Many new jobs in one statement, each column of the batch as one array (``unnest``):
# its text and plan never depend on how many rows, and there is no parameter limit.
# Arrays rather than one JSON document (``jsonb_to_recordset``): 8.6 ms instead of 9.9
# ms in PostgreSQL per 1,000 jobs, and 3 ms instead of 5.5 ms to build in Python (each
# job's ``[args, kwargs]`` is JSON text made once, by the size check). The columns left
# out take their defaults; ``available_at`` is the database's clock for a job due at
# once, as a single enqueue's ``Now()`` is.
# The new job's values by name, and each one's type (NEW_JOB_FIELDS' order, ``call`` for
# ``args`` and ``kwargs``): the row source of INSERT_MANY (a column array each) and of
# INSERT_ONE (one VALUES row).
_NEW_JOB_TYPES = (("id", "uuid"), ("task_path", "text"), ("queue_name", "text"),
                  ("priority", "int"), ("status", "text"), ("call", "jsonb"),
                  ("max_attempts", "int"), ("enqueued_at", "timestamptz"),
                  ("run_after", "timestamptz"), ("workflow_id", "uuid"), ("waiting_on", "int"),
                  ("links", "jsonb"), ("unique_key", "text"), ("expires_at", "timestamptz"),
                  ("headers", "jsonb"))
_INSERT_FROM = (
    "INSERT INTO \"django_tasks_job\" (" + ", ".join(INSERT_COLUMNS) + ") "
    "SELECT j.id, j.task_path, %(backend)s, j.queue_name, j.priority, j.status, "
    "j.call->0, j.call->1, '[]', '[]', 0, j.max_attempts, j.enqueued_at, j.run_after, "
    "COALESCE(j.run_after, statement_timestamp()), '', '', j.workflow_id, j.waiting_on, "
    "j.links, j.unique_key, j.expires_at, j.headers FROM {rows} "
    "AS j(" + ", ".join(name for name, _ in _NEW_JOB_TYPES) + ")"
)
INSERT_MANY = _INSERT_FROM.format(rows="unnest(" + ", ".join(
    f"%({name})s::{kind}[]" for name, kind in _NEW_JOB_TYPES) + ")")
# One new job (an ``enqueue()``): the same columns and values, from one VALUES row whose
# parameters psycopg binds as they are (no array literal to build, no unnest to plan).
INSERT_ONE = _INSERT_FROM.format(rows="(VALUES (" + ", ".join(
    f"%({name})s::{kind}" for name, kind in _NEW_JOB_TYPES) + "))")
# ... committing without waiting for the disk (OPTIONS["ASYNCHRONOUS_COMMIT"], an enqueue
# that is its own transaction: docs/reliability.md says what a crash can then lose).
INSERT_ONE_NO_DISK_WAIT = INSERT_ONE + " WHERE " + NO_DISK_WAIT
# The ids inserted (a batch with unique jobs: those whose key was held are not).
INSERTED_IDS = " RETURNING id"
# The batch and one NOTIFY per channel (the queues of its READY jobs) in one statement,
# delivered at commit; none if nothing was inserted. Rows: the ids inserted when
# ``want_ids`` (else none), then a NULL per channel notified.
INSERT_MANY_NOTIFY = (
    "WITH j AS ({insert} RETURNING id) SELECT id FROM j WHERE %(want_ids)s "
    "UNION ALL SELECT NULL FROM (SELECT pg_notify(c, '') "
    "FROM unnest(%(channels)s::text[]) AS c WHERE EXISTS (SELECT 1 FROM j)) AS n"
)

# Many new jobs of one transaction (none unique) by COPY: no arrays to parse and unnest,
# a fifth less of PostgreSQL's CPU per job than INSERT_MANY (alternating runs of 20,000
# jobs: 8.0-8.5 vs 10-11 us). A COPY computes nothing, so the database's clock for the
# jobs due at once (``available_at``) is read first, with the NOTIFY of each channel
# (delivered at commit, like the rows).
COPY_MANY = "COPY \"django_tasks_job\" (" + ", ".join(INSERT_COLUMNS) + ") FROM STDIN"
COPY_CLOCK_NOTIFY = (
    "SELECT statement_timestamp(), "
    "(SELECT count(pg_notify(c, '')) FROM unnest(%(channels)s::text[]) AS c)"
)
#: Rows per write of a COPY.
COPY_CHUNK = 1000

# -- waking workers ------------------------------------------------------------------------

# Enqueue and wake in one statement, so one round trip and in autocommit one commit:
# the job cannot be stored while the caller sees an error from a separate NOTIFY. A
# unique job's INSERT (ON CONFLICT DO NOTHING) that inserted nothing notifies nobody.
# NOTIFY is delivered at commit; identical notifications of one transaction fold into one.
INSERT_NOTIFY = "WITH j AS ({insert} RETURNING 1) SELECT pg_notify(%(channel)s, '') FROM j"
NOTIFY = "SELECT pg_notify(c, '') FROM unnest(%s::text[]) AS c"
# Composed with psycopg's sql.Identifier (a channel name is an identifier, not a value).
LISTEN = "LISTEN {}"


class PostgreSQL(Engine):
    """The job store's statements on PostgreSQL (module docstring)."""

    fail_waiting_sql = FAIL_WAITING
    progress_sql = PROGRESS
    reserve_sql = RESERVE_SLOTS

    notifies = True
    commits_without_disk_wait = True

    def cursor(self) -> Any:
        """A cursor whose statements are bound and prepared by the server.

        Django's own cursors bind parameters on the client (``server_side_binding`` off
        by default), so PostgreSQL parses, analyses and plans every statement anew: in a
        profile of the backend serving a worker's round trips, the parser alone was a
        tenth of its CPU. Every statement here is a constant text with named parameters,
        so it is prepared once per connection and then only executed.
        ``TASKS[...]["OPTIONS"]["PREPARED_STATEMENTS"] = False`` turns this off (a
        connection pooler that cannot keep prepared statements: PgBouncer before 1.21
        in transaction mode).
        """
        connection = self.connection
        if not self.prepared or connection.queries_logged:
            # Logging queries (DEBUG, or a test capturing them): Django's own cursor,
            # whose log shows each statement with its values (psycopg keeps no text of
            # a prepared one to show).
            return connection.cursor()
        connection.ensure_connection()
        connection.validate_thread_sharing()
        raw = connection.connection
        if raw.prepare_threshold is None:
            # Django's default, None, makes psycopg prepare nothing, even when asked. A
            # threshold never reached prepares what asks (ours) and nothing else: other
            # cursors on this connection are Django's, which bind on the client and never
            # prepare, unless the project chose server-side binding (then it chose its
            # own threshold too, or none: this one is never reached).
            raw.prepare_threshold = _NEVER
        with connection.wrap_database_errors:
            return connection.make_cursor(_prepared_cursor_class()(raw))

    def prepare_worker_connection(self) -> None:
        """The worker's round trips read jobs through an index, never a bitmap or a
        sequential scan.

        Right after a burst of enqueues (a TRUNCATE, a bulk load) the table's statistics
        can say it is nearly empty; planned then, the claim fetched every ready row of a
        queue (a bitmap scan of the claim index, then a sort) to return the first few:
        measured 13 ms and 544 buffers per claim instead of 0.3 ms and 11, a tenth of
        the drain rate until autovacuum analyzed the table. Every statement of the round
        trip has an index that answers it in order, so on this connection (the broker
        thread's own) the planner is left no other way.

        And its prepared statements are planned once (``plan_cache_mode =
        force_generic_plan``). Left to choose, PostgreSQL planned the round trip anew on
        every execution (a custom plan: the generic one's estimates looked worse), 0.5-0.7
        ms of the backend's CPU per round trip, a third of its CPU per job with one
        worker and more with several, whose round trips carry fewer jobs each (drains
        of 20,000 jobs, pg_stat_statements with ``track_planning``: as many plans as
        calls). With the scans above ruled out, the generic plan is the custom one:
        index scans of the claim index and the primary key.

        And nothing is compiled (``jit = off``). A generic plan knows neither the claim's
        ``LIMIT`` nor its queue, so it costs the claim as reading a tenth of the queue's
        ready rows: with a million of them (statistics up to date, as autovacuum keeps
        them) the round trip's estimate passed ``jit_above_cost`` (146,764 against
        100,000), and PostgreSQL JIT-compiled it on every execution, for a statement
        that reads a few dozen rows: 45-60 ms per round trip instead of 1.2-1.9, a deep
        queue drained at 135-173 jobs/s instead of 2,157 (docs/performance.md, "Issue
        20, the deep queue").
        """
        with self.connection.cursor() as cursor:
            cursor.execute("SET enable_bitmapscan = off")
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute("SET jit = off")

    def job_id(self, value: str) -> Any:
        return uuid.UUID(value)

    def time(self, value: str | datetime | None) -> Any:
        return as_datetime(value)

    def now(self) -> datetime:
        with self.cursor() as cursor:
            cursor.execute(NOW)
            return cursor.fetchone()[0]

    # -- the round trip -------------------------------------------------------------------

    def record_starts(self, worker_id: str, starts: Sequence[Start]) -> int:
        with self.cursor() as cursor:
            cursor.execute(RECORD_STARTS, {"worker": worker_id, **_starts(starts)})
            return cursor.rowcount

    def write_outcomes(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        with self.cursor() as cursor:
            cursor.execute(APPLY_OUTCOMES, {"worker": worker_id, **_outcomes(outcomes)})
            return [Applied._make(row) for row in cursor.fetchall()]

    def claim(self, worker_id: str, lease: str, claim: ByQueues | ByIds,
              now: datetime | None) -> list[MessageRow]:
        if not claim.wanted:
            return []
        if isinstance(claim, ByIds):
            sql = CLAIM_IDS_ALONE if claim.no_disk_wait else CLAIM_IDS
        else:
            sql = CLAIM_READY_ALONE
        with self.cursor() as cursor:
            cursor.execute(sql, self._claim_params(worker_id, lease, claim, now))
            return [MessageRow._make(row) for row in cursor.fetchall()]

    def _claim_params(self, worker_id: str, lease: str, claim: ByQueues | ByIds,
                      now: datetime | None) -> dict[str, Any]:
        params = {"worker": worker_id, "lease": lease, "backend": self.backend,
                  "now": self.time(now)}  # None: the database's clock
        if isinstance(claim, ByIds):
            params["claim_ids"] = array(map(str, claim.ids))
        else:
            params["queues"] = list(claim.queues) or [""]
            params["limit"] = max(0, claim.limit) if claim.queues else 0
        return params

    def exchange(self, store: RoundTrip, worker_id: str, lease: str, starts: Sequence[Start],
                 outcomes: Sequence[Outcome], claim: ByQueues | ByIds,
                 now: datetime | None) -> tuple[list[MessageRow], list[Applied]]:
        """One statement (EXCHANGE_READY, EXCHANGE_IDS), or the claim alone when there is
        nothing to write. If an outcome hook fails, all of it is rolled back and the
        three parts are made one by one (the base class's way): then only the jobs whose
        hooks fail are failed (``JobStore.apply_outcomes``)."""
        if not (starts or outcomes):
            return self.claim(worker_id, lease, claim, now), []
        sql = EXCHANGE_IDS if isinstance(claim, ByIds) else EXCHANGE_READY
        params = {**self._claim_params(worker_id, lease, claim, now), **_starts(starts),
                  **_outcomes(outcomes)}

        def write() -> tuple[list[ExchangeRow], list[ExchangeRow]]:
            with self.cursor() as cursor:
                cursor.execute(sql, params)
                rows = [ExchangeRow._make(row) for row in cursor.fetchall()]
            return [r for r in rows if r.kind == "c"], [r for r in rows if r.kind == "d"]

        try:
            return store.write_with_hooks(outcomes, write)
        except OutcomeHookFailed:
            return super().exchange(store, worker_id, lease, starts, outcomes, claim, now)

    # -- cancelling and workflows ---------------------------------------------------------

    def cancel_unheld(self, ids: Sequence[str], error: str, now: datetime) -> list[Applied]:
        with self.cursor() as cursor:
            cursor.execute(CANCEL_UNHELD, {"ids": list(ids), "error": error,
                                           "now": self.time(now), "backend": self.backend})
            return [Applied._make(row) for row in cursor.fetchall()]

    def cancel_held(self, ids: Sequence[str], error: str) -> list[Any]:
        with self.cursor() as cursor:
            cursor.execute(CANCEL_HELD, {"ids": list(ids), "error": error,
                                         "backend": self.backend})
            return [row[0] for row in cursor.fetchall()]

    # -- bulk enqueue -----------------------------------------------------------------

    def insert_many(self, jobs: Sequence[NewJob], *, unique: bool,
                    channels: Sequence[str] = ()) -> set[str] | None:
        insert = INSERT_MANY + (ON_CONFLICT_UNIQUE if unique else "")
        params: dict[str, Any] = {"backend": self.backend, **new_jobs(jobs)}
        # Prepared, bound by the server: the column arrays travel as parameters instead
        # of being quoted into one long SQL text for PostgreSQL to parse (alternating
        # runs of 20,000 jobs: Python 21-26 vs 22-33 us, PostgreSQL 13-22 vs 17-25 us).
        with self.cursor() as cursor:
            if channels:
                cursor.execute(INSERT_MANY_NOTIFY.format(insert=insert),
                               {**params, "want_ids": unique, "channels": list(channels)})
            else:
                cursor.execute(insert + (INSERTED_IDS if unique else ""), params)
            if not unique:
                return None
            return {str(row[0]) for row in cursor.fetchall() if row[0] is not None}

    def copy_many(self, jobs: Sequence[NewJob], *, channels: Sequence[str] = (),
                  meanwhile: Iterator[None] | None = None) -> bool:
        """COPY ``jobs`` (none unique, each knowing its ``call_split``) in the caller's
        transaction and NOTIFY ``channels`` at commit; False (nothing done) outside a
        transaction or where statements are logged (a COPY is not), then INSERT them.
        A step of ``meanwhile`` runs after each chunk is written: PostgreSQL loads one
        while Python does the caller's work (the results of a bulk enqueue)."""
        connection = self.connection
        if not self.prepared or connection.queries_logged or not connection.in_atomic_block:
            return False
        with self.cursor() as cursor:
            cursor.execute(COPY_CLOCK_NOTIFY, {"channels": list(channels)})
            now = cursor.fetchone()[0]
        raw = connection.connection
        with connection.wrap_database_errors, raw.cursor() as cursor, \
                cursor.copy(COPY_MANY) as copy:
            for start in range(0, len(jobs), COPY_CHUNK):
                copy.write(copy_rows(jobs[start:start + COPY_CHUNK], self.backend, now))
                if meanwhile is not None:
                    next(meanwhile, None)
        return True

    # -- waking workers ------------------------------------------------------------------

    def insert_one(self, job: NewJob, *, notify: str | None = None,
                   no_disk_wait: bool = False) -> bool:
        unique = bool(job.unique_key)
        sql = (INSERT_ONE_NO_DISK_WAIT if no_disk_wait else INSERT_ONE) + (
            ON_CONFLICT_UNIQUE if unique else "")
        # INSERT_ONE's placeholders are _NEW_JOB_TYPES' names, which are NewJob's fields.
        params = {name: getattr(job, name) for name, _ in _NEW_JOB_TYPES}
        params.update(backend=self.backend,
                      links=None if job.links is None else dumps(job.links),
                      headers=None if job.headers is None else dumps(job.headers))
        with self.cursor() as cursor:
            if notify is not None:
                cursor.execute(INSERT_NOTIFY.format(insert=sql), {**params, "channel": notify})
                return bool(cursor.fetchall())  # a row if inserted (and notified)
            if not unique:
                cursor.execute(sql, params)
                return True
            cursor.execute(sql + INSERTED, params)
            return bool(cursor.fetchall())

    def notify(self, channels: Sequence[str]) -> None:
        with self.cursor() as cursor:
            cursor.execute(NOTIFY, [list(channels)])

    def listen(self, channels: Sequence[str]) -> PostgresListener:
        return PostgresListener(self.connection, channels)


#: A prepare threshold no statement reaches by repetition (see PostgreSQL.cursor).
_NEVER = 2**62


@cache
def _prepared_cursor_class() -> type:
    """Django's server-binding cursor, preparing every statement it runs (psycopg's
    ``prepare=True``: Django turns psycopg's automatic preparing off, for poolers)."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparedCursor(ServerBindingCursor):
        def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                    binary: bool | None = None) -> Any:
            return super().execute(query, params, prepare=True, binary=binary)

    return PreparedCursor


class PostgresListener:
    """A dedicated autocommit connection LISTENing on some channels."""

    def __init__(self, connection: Any, channels: Sequence[str]) -> None:
        # psycopg is imported here, not at the top: this module is imported on SQLite
        # too, where psycopg need not be installed.
        import psycopg
        from psycopg import sql

        params = connection.get_connection_params()
        for key in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(key, None)
        self.conn = psycopg.connect(autocommit=True, **params)
        for channel in channels:
            self.conn.execute(sql.SQL(LISTEN).format(sql.Identifier(channel)))

    def fileno(self) -> int:
        return self.conn.fileno()

    def drain(self) -> int:
        """Consume pending notifications without blocking; return how many there were."""
        return sum(1 for _ in self.conn.notifies(timeout=0))

    def close(self) -> None:
        self.conn.close()


def _outcomes(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Parameters of APPLY_OUTCOMES: the outcomes as one JSON document, and their ids."""
    return {
        "outcome_ids": array(o.id for o in outcomes),
        "outcomes": dumps([
            {"id": o.id, "lease": o.lease, "status": o.status, "return_value": o.return_value,
             "error": o.error, "finished_at": o.finished_at, "retry_at": o.retry_at,
             "retry_delay": o.retry_delay,
             "started_at": o.started_at}
            for o in outcomes
        ]),
    }


def _starts(starts: Sequence[Start]) -> dict[str, Any]:
    """Parameters of RECORD_STARTS (``worker`` aside)."""
    return {"start_ids": array(s.id for s in starts),
            "starts": dumps([{"id": s.id, "lease": s.lease, "at": s.at} for s in starts])}
