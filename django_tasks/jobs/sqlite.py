"""The job store on SQLite: every statement it runs, and the engine that runs them.

Where a job is claimed: :data:`CLAIM_READY` (the database broker) and :data:`CLAIM_IDS`
(a broker that carries ids, such as Redis). Each is one ``UPDATE … RETURNING``, which
holds SQLite's single write lock for its duration, so concurrent workers never claim
the same job. The worker's round trip is three statements (:data:`RECORD_START` per
start, :data:`APPLY_OUTCOME` per outcome, the claim) in one transaction: one write lock
for all of them. Statements PostgreSQL runs as written too are in
:mod:`django_tasks.jobs.portable`.

SQLite has no arrays: a list of ids or queues is one placeholder each (``{ids}``,
``{queues}`` in the text, spelled out per call by :func:`_listed`). It has no clock of
its own beyond the host's, which is every worker's too (one host): ``now`` is the
host's. Ids are stored as 32 hex digits, as Django stores a UUIDField there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.utils import timezone

from ..results import as_datetime
from ..serialization import dumps
from .engine import Engine
from .messages import APPLIED_COLUMNS, Applied, ByIds, ByQueues, NewJob, Outcome, Start
from .portable import INSERT_COLUMNS, ON_CONFLICT_UNIQUE, reserve_slots
from .rows import MESSAGE_COLUMNS, MessageRow

__all__ = ["SQLite"]

# -- starts and outcomes -------------------------------------------------------------------

# One start (run once per start, by executemany).
RECORD_START = (
    "UPDATE \"django_tasks_job\" SET status = 'RUNNING', attempts = attempts + 1, "
    "started_at = COALESCE(started_at, %(at)s), last_attempted_at = %(at)s, "
    "worker_ids = json_insert(worker_ids, '$[#]', %(worker)s) "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = 'CLAIMED'"
)
# One outcome. A job that started and finished between two writes has no recorded
# start: the outcome counts its attempt (status still CLAIMED tells), unless it never
# ran (a cancelled job dropped from a worker's buffer: CANCELLED without an error). A job asked
# to cancel (``cancellation`` set) ends CANCELLED whatever its attempt did, with the
# cancellation as its last error (or the outcome's own, when it is CANCELLED already:
# the pool's terminate names the kill: its message is then prefixed with who asked).
_RAN = ("status = 'CLAIMED' AND (%(status)s <> 'CANCELLED' "
        "OR %(error)s IS NOT NULL)")
APPLY_OUTCOME = (
    "UPDATE \"django_tasks_job\" SET "
    "status = CASE WHEN cancellation IS NULL THEN %(status)s ELSE 'CANCELLED' END, "
    "return_value = CASE WHEN cancellation IS NULL THEN %(return_value)s ELSE NULL END, "
    "errors = CASE WHEN cancellation IS NULL OR %(status)s = 'CANCELLED' THEN "
    "(CASE WHEN %(error)s IS NULL THEN "
    # A CANCELLED outcome without an error (dropped unstarted): the cancellation.
    "CASE WHEN cancellation IS NULL THEN errors "
    "ELSE json_insert(errors, '$[#]', json(cancellation)) END "
    "ELSE json_insert(errors, '$[#]', CASE WHEN cancellation IS NULL "
    "THEN json(%(error)s) ELSE json_set(json(%(error)s), "
    "'$.message', json_extract(cancellation, '$.message') || ': ' "
    "|| json_extract(%(error)s, '$.message')) END) END) "
    "ELSE json_insert(CASE WHEN %(error)s IS NULL THEN errors "
    "ELSE json_insert(errors, '$[#]', json(%(error)s)) END, "
    "'$[#]', json(cancellation)) END, "
    "finished_at = CASE WHEN cancellation IS NULL THEN %(finished_at)s "
    "ELSE COALESCE(%(finished_at)s, %(now)s) END, "
    "available_at = COALESCE(%(retry_at)s, available_at), "
    "attempts = CASE WHEN " + _RAN + " THEN attempts + 1 ELSE attempts END, "
    "started_at = COALESCE(started_at, %(started_at)s), "
    "last_attempted_at = CASE WHEN " + _RAN + " THEN %(started_at)s "
    "ELSE last_attempted_at END, "
    "worker_ids = CASE WHEN " + _RAN + " THEN json_insert(worker_ids, '$[#]', %(worker)s) "
    "ELSE worker_ids END, "
    "lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status IN ('CLAIMED', 'RUNNING') "
    # Nothing becomes CANCELLED unless cancelling it was asked for.
    "AND (%(status)s <> 'CANCELLED' OR cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(APPLIED_COLUMNS)
)

# -- claiming ------------------------------------------------------------------------------

# The best ready jobs of some queues (the database broker), ``{queues}`` one placeholder
# per queue.
# Rate limits: the host's clock read by the statement itself (once it holds the write
# lock, so a wait for the lock does not date the slots), in seconds since the epoch; the
# floor is a cast, the value being >= 0 where it is taken.
RESERVE_SLOTS = reserve_slots("((julianday('now') - 2440587.5) * 86400.0)", "MAX", "MIN",
                              "CAST({} AS INTEGER)")
CLAIM_READY = (
    "UPDATE \"django_tasks_job\" SET status = 'CLAIMED', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN (SELECT id FROM \"django_tasks_job\" WHERE status = 'READY' "
    "AND backend = %(backend)s AND queue_name IN ({queues}) AND available_at <= %(now)s "
    "ORDER BY priority DESC, available_at LIMIT %(limit)s) "
    "RETURNING " + ", ".join(MESSAGE_COLUMNS)
)
# Jobs by id (a broker that carries ids, such as Redis, chose them), ``{ids}`` one
# placeholder per id: only rows still READY and due change, so a duplicated or stale
# message claims nothing.
CLAIM_IDS = (
    "UPDATE \"django_tasks_job\" SET status = 'CLAIMED', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN ({ids}) AND status = 'READY' AND backend = %(backend)s "
    "AND available_at <= %(now)s "
    "RETURNING " + ", ".join(MESSAGE_COLUMNS)
)

# -- progress, cancelling, workflows -------------------------------------------------------

PROGRESS = (
    "UPDATE \"django_tasks_job\" SET progress = %(progress)s "
    "WHERE id = %(id)s AND (%(lease)s = '' OR lease = %(lease)s) "
    "AND status IN ('CLAIMED', 'RUNNING')"
)
# Cancelling: a job not started is CANCELLED at once (returns Applied's columns, for
# the outcome hooks); a held one is marked, and its outcome is then written CANCELLED.
CANCEL_UNHELD = (
    "UPDATE \"django_tasks_job\" SET status = 'CANCELLED', finished_at = %(now)s, "
    "errors = json_insert(errors, '$[#]', json(%(error)s)), "
    "cancellation = json(%(error)s), lease = '' "
    "WHERE id IN ({ids}) AND backend = %(backend)s AND status IN ('READY', 'WAITING') "
    "RETURNING " + ", ".join(APPLIED_COLUMNS)
)
CANCEL_HELD = (
    "UPDATE \"django_tasks_job\" SET cancellation = json(%(error)s) "
    "WHERE id IN ({ids}) AND backend = %(backend)s "
    "AND status IN ('CLAIMED', 'RUNNING') AND lease <> '' "
    "AND cancellation IS NULL "
    "RETURNING id"
)
# A workflow step whose input failed: FAILED without running; its links, to go on down.
FAIL_WAITING = (
    "UPDATE \"django_tasks_job\" SET status = 'FAILED', finished_at = %(now)s, "
    "errors = json_insert(errors, '$[#]', json(%(error)s)) "
    "WHERE id = %(id)s AND status = 'WAITING' RETURNING links"
)

# -- bulk enqueue --------------------------------------------------------------------------

# Many new jobs in one statement, the batch as one JSON array (``_new_jobs``: a row per
# job, its ``[args, kwargs]`` first) read by ``json_each``: one parameter however many
# rows, so SQLite's limit on variables (999 before 3.32) never splits a batch. ``WHERE
# true``: SQLite's grammar needs it between a SELECT and an ON CONFLICT clause.
# ``available_at`` of a job due at once is the statement's clock, as a single enqueue's
# ``Now()`` is.
NEW_JOB_FIELDS = ("id", "task_path", "queue_name", "priority", "status", "max_attempts",
                  "enqueued_at", "run_after", "workflow_id", "waiting_on", "links",
                  "unique_key", "expires_at", "headers")
_V = {name: f"json_extract(j.value, '$[{i + 1}]')" for i, name in enumerate(NEW_JOB_FIELDS)}
INSERT_MANY = (
    "INSERT INTO \"django_tasks_job\" (" + ", ".join(INSERT_COLUMNS) + ") SELECT "
    f"{_V['id']}, {_V['task_path']}, %(backend)s, {_V['queue_name']}, {_V['priority']}, "
    f"{_V['status']}, json_extract(j.value, '$[0][0]'), json_extract(j.value, '$[0][1]'), "
    f"'[]', '[]', 0, {_V['max_attempts']}, {_V['enqueued_at']}, {_V['run_after']}, "
    f"COALESCE({_V['run_after']}, STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')), '', '', "
    f"{_V['workflow_id']}, {_V['waiting_on']}, {_V['links']}, {_V['unique_key']}, "
    f"{_V['expires_at']}, {_V['headers']} "
    "FROM json_each(%(jobs)s) AS j WHERE true"
)
# The ids inserted (a batch with unique jobs: those whose key was held are not).
INSERTED_IDS = " RETURNING id"


class SQLite(Engine):
    """The job store's statements on SQLite (module docstring). The round trip is the
    base class's: three parts in one transaction."""

    fail_waiting_sql = FAIL_WAITING
    progress_sql = PROGRESS
    reserve_sql = RESERVE_SLOTS

    def job_id(self, value: str) -> Any:
        return uuid.UUID(value).hex  # as Django stores a UUIDField: 32 hex digits

    def time(self, value: str | datetime | None) -> Any:
        dt = as_datetime(value)
        return None if dt is None else self.connection.ops.adapt_datetimefield_value(dt)

    def now(self) -> datetime:
        return timezone.now()  # one host: the database's clock is this host's

    # -- the round trip -------------------------------------------------------------------

    def record_starts(self, worker_id: str, starts: Sequence[Start]) -> int:
        with self.cursor() as cursor:
            cursor.executemany(RECORD_START, [
                {"at": self.time(s.at), "worker": worker_id, "id": self.job_id(s.id),
                 "lease": s.lease} for s in starts
            ])
            return cursor.rowcount

    def write_outcomes(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        rows = []
        with self.cursor() as cursor:
            for o in outcomes:
                cursor.execute(APPLY_OUTCOME, self._outcome_params(worker_id, o))
                rows.extend(Applied._make(row) for row in cursor.fetchall())
        return rows

    def _outcome_params(self, worker_id: str, o: Outcome) -> dict[str, Any]:
        rv = o.return_value
        return {
            "status": o.status, "return_value": None if rv is None else dumps(rv),
            "error": dumps(o.error) if o.error else None,
            "finished_at": self.time(o.finished_at), "retry_at": self.time(o.retry_at),
            "started_at": self.time(o.started_at), "worker": worker_id,
            "id": self.job_id(o.id), "lease": o.lease, "now": self.time(timezone.now()),
        }

    def claim(self, worker_id: str, lease: str, claim: ByQueues | ByIds,
              now: datetime | None) -> list[MessageRow]:
        if not claim.wanted:
            return []
        params: dict[str, Any] = {"worker": worker_id, "lease": lease, "backend": self.backend,
                                  "now": self.time(now or timezone.now())}
        if isinstance(claim, ByIds):
            sql, listed = _listed(CLAIM_IDS, "ids", [self.job_id(i) for i in claim.ids])
        else:
            sql, listed = _listed(CLAIM_READY, "queues", claim.queues)
            params["limit"] = claim.limit
        with self.cursor() as cursor:
            cursor.execute(sql, {**listed, **params})
            return [MessageRow._make(row) for row in cursor.fetchall()]

    # -- cancelling and workflows ---------------------------------------------------------

    def cancel_unheld(self, ids: Sequence[str], error: str, now: datetime) -> list[Applied]:
        sql, params = _listed(CANCEL_UNHELD, "ids", [self.job_id(i) for i in ids])
        with self.cursor() as cursor:
            cursor.execute(sql, {**params, "error": error, "now": self.time(now),
                                 "backend": self.backend})
            return [Applied._make(row) for row in cursor.fetchall()]

    def cancel_held(self, ids: Sequence[str], error: str) -> list[Any]:
        sql, params = _listed(CANCEL_HELD, "ids", [self.job_id(i) for i in ids])
        with self.cursor() as cursor:
            cursor.execute(sql, {**params, "error": error, "backend": self.backend})
            return [row[0] for row in cursor.fetchall()]

    def insert_many(self, jobs: Sequence[NewJob], *, unique: bool,
                    channels: Sequence[str] = ()) -> set[str] | None:
        time = self.connection.ops.adapt_datetimefield_value
        rows = []
        for j in jobs:
            row = dumps([uuid.UUID(j.id).hex, j.task_path, j.queue_name, j.priority, j.status,
                         j.max_attempts, time(j.enqueued_at), time(j.run_after),
                         None if j.workflow_id is None else uuid.UUID(j.workflow_id).hex,
                         j.waiting_on, j.links, j.unique_key, time(j.expires_at),
                         j.headers])
            rows.append(f"[{j.call},{row[1:]}")
        document = f"[{','.join(rows)}]"
        sql = INSERT_MANY + (ON_CONFLICT_UNIQUE + INSERTED_IDS if unique else "")
        with self.connection.cursor() as cursor:
            cursor.execute(sql, {"backend": self.backend, "jobs": document})
            if not unique:
                return None
            return {str(uuid.UUID(row[0])) for row in cursor.fetchall()}

    def writes_in_own_transaction(self, own: Any) -> bool:
        # Inside the task's own transaction: SQLite has one writer at a time, so a second
        # connection would wait for the task to commit. Written there, seen at commit.
        return own.in_atomic_block


def _listed(statement: str, name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``statement`` with ``{name}`` spelled as one placeholder per value (``%(i0)s,
    %(i1)s, ...`` for ``ids``), and those placeholders' parameters."""
    params = {f"{name[0]}{n}": value for n, value in enumerate(values)}
    return statement.replace("{" + name + "}", ", ".join(f"%({p})s" for p in params)), params
