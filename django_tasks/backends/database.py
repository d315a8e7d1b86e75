"""The database broker: the job table is the queue.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (many jobs per round trip, one
statement) and wakes idle workers with ``LISTEN/NOTIFY``; SQLite claims with one
``UPDATE … RETURNING`` statement, which holds SQLite's single write lock for its
duration, so concurrent workers never claim the same job. Enqueueing is a plain
INSERT on the caller's connection: inside ``transaction.atomic()`` the job is part
of that transaction, invisible to workers until commit and gone on rollback.

Guarantees (each method's docstring states its own):
- a job is held by at most one worker at a time (``status='RUNNING'``, ``worker_id``);
- an outcome is written only by the worker that holds the job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core import checks
from django.db import connections, transaction
from django.db.models.sql import InsertQuery
from django.utils import timezone

from ..serialization import dumps
from ..states import CLAIMED, FAILED, READY, RUNNING
from .base import ModelBackend, as_datetime

__all__ = ["DatabaseBackend"]

CHANNEL = "django_tasks"
HELD_SQL = f"('{CLAIMED}', '{RUNNING}')"
LOST_CLASS = "django_tasks.exceptions.WorkerLost"

# Columns a claim returns, in order; the worker's message is built from them.
_CLAIM_COLUMNS = (
    "id", "task_path", "queue_name", "priority", "backend", "args", "kwargs", "attempts",
    "max_attempts", "worker_ids", "errors", "enqueued_at", "started_at", "run_after",
    "available_at",
)
_JSON_COLUMNS = {"args", "kwargs", "worker_ids", "errors"}
_TIME_COLUMNS = {"enqueued_at", "started_at", "run_after", "available_at"}


def _iso(value: Any) -> str | None:
    dt = as_datetime(value)
    return dt.isoformat() if dt is not None else None


class _Dialect:
    """The SQL of the job table's state changes, and the few fragments vendors differ in.

    A job's life in the table: READY -> CLAIMED (a worker took it; not started) ->
    RUNNING (started: the attempt is counted) -> SUCCESSFUL | FAILED, or READY again
    for a retry. A worker's writes are guarded by ``worker_id`` and the held statuses,
    so a worker that no longer holds a job cannot change it.
    """

    vendor = ""
    append_text = ""  # expression: the JSON array {0} with the text parameter appended
    append_json = ""  # expression: the JSON array {0} with the JSON parameter appended
    lost_error = ""  # expression: a WorkerLost error dict from the row and (now, reason)
    lock = ""

    def __init__(self, connection: Any, table: str) -> None:
        self.connection = connection
        self.table = connection.ops.quote_name(table)

    def time(self, value: datetime | None) -> Any:
        return self.connection.ops.adapt_datetimefield_value(value)

    def iso_time(self, value: str | None) -> Any:
        return self.time(as_datetime(value))

    def job_id(self, value: str) -> Any:
        # SQLite stores UUIDField as 32 hex digits.
        return uuid.UUID(value).hex

    def claim_sql(self, nqueues: int) -> str:
        """Take up to LIMIT ready jobs, best first; params: worker, *queues, backend, now, limit."""
        queues = ", ".join(["%s"] * nqueues)
        return (
            f"UPDATE {self.table} SET status = '{CLAIMED}', worker_id = %s "
            f"WHERE id IN (SELECT id FROM {self.table} WHERE status = '{READY}' "
            f"AND queue_name IN ({queues}) AND backend = %s AND available_at <= %s "
            f"ORDER BY priority DESC, available_at LIMIT %s{self.lock}) "
            f"RETURNING {', '.join(_CLAIM_COLUMNS)}"
        )

    def exchange(self, worker_id: str, starts: Sequence[tuple[str, str]],
                 outcomes: Sequence[dict[str, Any]], backend: str, queues: Sequence[str],
                 limit: int, now: datetime) -> list[tuple]:
        """Record starts, then outcomes, then claim, in one transaction."""
        start_sql = (
            f"UPDATE {self.table} SET status = '{RUNNING}', attempts = attempts + 1, "
            f"started_at = COALESCE(started_at, %s), last_attempted_at = %s, "
            f"worker_ids = {self.append_text.format('worker_ids')} "
            f"WHERE id = %s AND worker_id = %s AND status = '{CLAIMED}'"
        )
        # A job that started and finished since the last exchange has no start record:
        # the outcome counts its attempt (status still CLAIMED tells).
        fresh = f"status = '{CLAIMED}'"
        complete_sql = (
            f"UPDATE {self.table} SET status = %s, return_value = %s, "
            f"errors = CASE WHEN %s IS NULL THEN errors "
            f"ELSE {self.append_json.format('errors')} END, "
            f"finished_at = %s, available_at = COALESCE(%s, available_at), "
            f"attempts = CASE WHEN {fresh} THEN attempts + 1 ELSE attempts END, "
            f"started_at = COALESCE(started_at, %s), "
            f"last_attempted_at = CASE WHEN {fresh} THEN %s ELSE last_attempted_at END, "
            f"worker_ids = CASE WHEN {fresh} THEN {self.append_text.format('worker_ids')} "
            f"ELSE worker_ids END "
            f"WHERE id = %s AND worker_id = %s AND status IN {HELD_SQL}"
        )
        start_rows = [
            (self.iso_time(at), self.iso_time(at), worker_id, self.job_id(i), worker_id)
            for i, at in starts
        ]
        complete_rows = []
        for o in outcomes:
            rv = o.get("return_value")
            error = dumps(o["error"]) if o.get("error") else None
            started = self.iso_time(o.get("started_at"))
            complete_rows.append((
                o["status"], None if rv is None else dumps(rv), error, error,
                self.iso_time(o.get("finished_at")), self.iso_time(o.get("available_at")),
                started, started, worker_id, self.job_id(o["id"]), worker_id,
            ))
        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as c:
            if start_rows:
                c.executemany(start_sql, start_rows)
            if complete_rows:
                c.executemany(complete_sql, complete_rows)
            if limit <= 0:
                return []
            t = self.time(now)
            c.execute(self.claim_sql(len(queues)), [worker_id, *queues, backend, t, limit])
            return c.fetchall()

    def _held_by(self, worker_id: str, job_ids: Sequence[str] | None) -> tuple[str, list]:
        """WHERE clause and parameters: rows of ``worker_id`` (only ``job_ids`` if given)."""
        where, params = "worker_id = %s", [worker_id]
        if job_ids is not None:
            where += f" AND id IN ({', '.join(['%s'] * len(job_ids))})"
            params += [self.job_id(i) for i in job_ids]
        return where, params

    def _give_back(self, cursor: Any, where: str, params: list) -> int:
        """Claimed, never started: READY again, as if never claimed."""
        cursor.execute(
            f"UPDATE {self.table} SET status = '{READY}', worker_id = '' "
            f"WHERE {where} AND status = '{CLAIMED}'", params,
        )
        return cursor.rowcount

    def release(self, worker_id: str, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        with self.connection.cursor() as cursor:
            return self._give_back(cursor, *self._held_by(worker_id, job_ids))

    def rescue(self, worker_id: str, reason: str, now: datetime,
               job_ids: Sequence[str] | None = None) -> tuple[int, int, int]:
        """Free what ``worker_id`` holds: (given back, to retry, failed) counts."""
        if job_ids is not None and not job_ids:
            return 0, 0, 0
        t = self.time(now)
        where, params = self._held_by(worker_id, job_ids)
        error = self.lost_error
        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as c:
            released = self._give_back(c, where, params)
            counts = []
            # Started jobs keep their counted attempt: READY again while attempts
            # remain (the first statement), else FAILED (the second takes the rest).
            for set_sql, condition in ((f"status = '{READY}', available_at = %s",
                                        " AND attempts < max_attempts"),
                                       (f"status = '{FAILED}', finished_at = %s", "")):
                c.execute(
                    f"UPDATE {self.table} SET {set_sql}, errors = "
                    f"{self.append_json.format('errors').replace('%s', error)} "
                    f"WHERE {where} AND status = '{RUNNING}'{condition}",
                    [t, reason, now.isoformat(), *params],
                )
                counts.append(c.rowcount)
            return released, counts[0], counts[1]

    def insert(self, job: Any, *, notify: bool) -> None:
        """Store a new job in one statement (and wake idle workers where that exists)."""
        job.save(force_insert=True, using=self.connection.alias)

    def tune(self) -> None:
        """Adjust the worker's own connection for the claim query (vendor-specific)."""


class _SQLite(_Dialect):
    vendor = "sqlite"
    append_text = "json_insert({0}, '$[#]', %s)"
    append_json = "json_insert({0}, '$[#]', json(%s))"
    lost_error = (
        f"json_object('exception_class_path', '{LOST_CLASS}', 'message', %s, "
        f"'traceback', '', 'attempt', attempts, 'worker_id', worker_id, 'occurred_at', %s)"
    )


class _PostgreSQL(_Dialect):
    vendor = "postgresql"
    append_text = "{0} || jsonb_build_array(%s::text)"
    append_json = "{0} || jsonb_build_array(%s::jsonb)"
    lost_error = (
        f"jsonb_build_object('exception_class_path', '{LOST_CLASS}', "
        f"'message', %s::text, 'traceback', '', 'attempt', attempts, "
        f"'worker_id', worker_id, 'occurred_at', %s::text)"
    )
    lock = " FOR UPDATE SKIP LOCKED"

    def time(self, value: datetime | None) -> Any:
        return value

    def iso_time(self, value: str | None) -> Any:
        return value  # PostgreSQL parses ISO 8601 itself

    def job_id(self, value: str) -> Any:
        return uuid.UUID(value)

    def exchange(self, worker_id: str, starts: Sequence[tuple[str, str]],
                 outcomes: Sequence[dict[str, Any]], backend: str, queues: Sequence[str],
                 limit: int, now: datetime) -> list[tuple]:
        # One statement, so one round trip and one commit however many starts, outcomes
        # and claims: data-modifying CTEs always run to completion. The claim's
        # sub-select sees the snapshot from before the CTEs, which only touch held rows.
        t = f"{self.table}"
        fresh = f"j.status = '{CLAIMED}'"
        sql = (
            f"WITH started AS (UPDATE {t} AS j SET status = '{RUNNING}', "
            f"attempts = j.attempts + 1, started_at = COALESCE(j.started_at, s.at), "
            f"last_attempted_at = s.at, worker_ids = j.worker_ids || jsonb_build_array(%s::text) "
            f"FROM jsonb_to_recordset(%s::jsonb) AS s(id uuid, at timestamptz) "
            f"WHERE j.id = s.id AND j.worker_id = %s AND j.status = '{CLAIMED}' RETURNING 1), "
            f"done AS (UPDATE {t} AS j SET status = o.status, "
            f"return_value = CASE WHEN jsonb_typeof(o.return_value) = 'null' THEN NULL "
            f"ELSE o.return_value END, "
            f"errors = CASE WHEN o.error IS NULL OR jsonb_typeof(o.error) = 'null' "
            f"THEN j.errors ELSE j.errors || jsonb_build_array(o.error) END, "
            f"finished_at = o.finished_at, "
            f"available_at = COALESCE(o.available_at, j.available_at), "
            f"attempts = CASE WHEN {fresh} THEN j.attempts + 1 ELSE j.attempts END, "
            f"started_at = COALESCE(j.started_at, o.started_at), "
            f"last_attempted_at = CASE WHEN {fresh} THEN o.started_at "
            f"ELSE j.last_attempted_at END, "
            f"worker_ids = CASE WHEN {fresh} THEN j.worker_ids || jsonb_build_array(%s::text) "
            f"ELSE j.worker_ids END "
            f"FROM jsonb_to_recordset(%s::jsonb) AS o(id uuid, status text, return_value jsonb, "
            f"error jsonb, finished_at timestamptz, available_at timestamptz, "
            f"started_at timestamptz) "
            f"WHERE j.id = o.id AND j.worker_id = %s AND j.status IN {HELD_SQL} RETURNING 1) "
            f"{self.claim_sql(len(queues))}"
        )
        starts_json = dumps([{"id": i, "at": at} for i, at in starts])
        outcomes_json = dumps([
            {key: o.get(key) for key in ("id", "status", "return_value", "error",
                                          "finished_at", "available_at", "started_at")}
            for o in outcomes
        ])
        params = [worker_id, starts_json, worker_id, worker_id, outcomes_json, worker_id,
                  worker_id, *queues, backend, now, max(0, limit)]
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def insert(self, job: Any, *, notify: bool) -> None:
        if not notify:
            return super().insert(job, notify=False)
        # INSERT and NOTIFY in one statement: one round trip, and in autocommit one
        # commit, so the job cannot be stored while the caller sees an error from a
        # separate NOTIFY. PostgreSQL delivers the NOTIFY at commit, and folds identical
        # ones of a transaction into one.
        query = InsertQuery(type(job))
        query.insert_values(type(job)._meta.concrete_fields, [job])
        [(insert_sql, params)] = query.get_compiler(using=self.connection.alias).as_sql()
        sql = (f"WITH j AS ({insert_sql} RETURNING queue_name) "
               f"SELECT pg_notify(%s, j.queue_name) FROM j")
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [*params, CHANNEL])

    def tune(self) -> None:
        # The claim must walk the claim index in order and stop after LIMIT rows. Right
        # after a burst of enqueues, before autovacuum has analyzed the table, the planner
        # believes the table nearly empty and prefers "bitmap scan, then sort" -- which
        # sorts the whole backlog on every claim (measured: 10 ms per claim at 18,000
        # ready jobs, a 20,000-job drain 2x slower). On the worker's own connection only,
        # make sorting a last resort; every query it runs has an index-ordered plan.
        with self.connection.cursor() as cursor:
            cursor.execute("SET enable_sort = off")


_DIALECTS: dict[str, type[_Dialect]] = {"sqlite": _SQLite, "postgresql": _PostgreSQL}


class PostgresListener:
    """A dedicated autocommit connection LISTENing for enqueue notifications."""

    def __init__(self, connection: Any) -> None:
        import psycopg

        params = connection.get_connection_params()
        for key in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(key, None)
        self.conn = psycopg.connect(autocommit=True, **params)
        self.conn.execute(f"LISTEN {CHANNEL}")

    def fileno(self) -> int:
        return self.conn.fileno()

    def drain(self) -> int:
        """Consume pending notifications without blocking; return how many there were."""
        return sum(1 for _ in self.conn.notifies(timeout=0))

    def close(self) -> None:
        self.conn.close()


class DatabaseBackend(ModelBackend):
    """Jobs, results and the queue in one table of your database.

    ``TASKS = {"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend"}}``
    """

    @property
    def connection(self) -> Any:
        return connections[self.database]

    def _dialect(self) -> _Dialect:
        from ..models import Job

        connection = self.connection
        try:
            dialect = _DIALECTS[connection.vendor]
        except KeyError:
            raise NotImplementedError(
                f"The database broker supports PostgreSQL and SQLite, not {connection.vendor}."
            ) from None
        return dialect(connection, Job._meta.db_table)

    # -- producer side -------------------------------------------------------------

    def publish(self, fields: dict[str, Any]) -> None:
        """Insert the job on the caller's connection, inside the caller's transaction.

        Rolled back, the job never existed; committed, it is claimable exactly once.
        """
        from ..models import Job

        self._dialect().insert(Job(**fields), notify=self.config.notify)

    # -- worker side (the broker interface) ---------------------------------------------

    def exchange(
        self,
        worker_id: str,
        *,
        starts: Sequence[tuple[str, str]] = (),
        outcomes: Sequence[dict[str, Any]] = (),
        queues: Sequence[str] = (),
        limit: int = 0,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """One round trip: record ``starts`` and ``outcomes``, then claim up to ``limit`` jobs.

        All of it commits together or not at all. ``starts`` are ``(job id, ISO time)``
        of jobs that began running (CLAIMED -> RUNNING, attempt counted); ``outcomes``
        come from the pool (plus ``started_at``), and one for a job with no recorded start
        counts the attempt itself. Writes about jobs ``worker_id`` no longer holds are
        ignored, so a worker presumed dead never overwrites a rescued job. Claimed jobs
        are CLAIMED by ``worker_id``, highest priority first, then oldest; nobody else
        can claim them until they are finished, released or rescued. Each returned
        message's ``attempts`` is the number of the attempt it is for.
        """
        now = now or timezone.now()
        if not queues:
            limit = 0
        if not (starts or outcomes or limit > 0):
            return []
        rows = self._dialect().exchange(
            worker_id, starts, outcomes, self.alias, list(queues) or [""], limit, now
        )
        messages = []
        for row in rows:
            message = dict(zip(_CLAIM_COLUMNS, row, strict=True))
            for key in _JSON_COLUMNS:
                if isinstance(message[key], str):
                    message[key] = json.loads(message[key])
            for key in _TIME_COLUMNS:
                message[key] = _iso(message[key])
            message["id"] = str(uuid.UUID(str(message["id"])))
            message["attempts"] += 1
            message["worker_ids"].append(worker_id)
            messages.append(message)
        # RETURNING has no order: restore the claim order (ISO strings, all UTC, sort
        # like the times they name).
        messages.sort(key=lambda m: (-m["priority"], m["available_at"]))
        return messages

    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[dict[str, Any]]:
        """Atomically take up to ``limit`` ready jobs for ``worker_id``, best first."""
        return self.exchange(worker_id, queues=queues, limit=limit, now=now)

    def complete(self, worker_id: str, outcomes: Sequence[dict[str, Any]]) -> None:
        """Record outcomes of jobs held by ``worker_id``, all in one transaction."""
        self.exchange(worker_id, outcomes=outcomes)

    def release(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Give back jobs claimed by ``worker_id`` but never started, as if never claimed."""
        return self._dialect().release(worker_id, list(job_ids))

    def rescue(self, worker_id: str, reason: str, *, job_ids: Sequence[str] | None = None,
               now: datetime | None = None) -> tuple[int, int, int]:
        """Free the jobs ``worker_id`` holds (all, or ``job_ids``) because it is gone.

        Claimed-but-not-started jobs go back to READY untouched. Started jobs get a
        ``WorkerLost`` error saying ``reason``; their attempt stays counted; they are
        READY again at once while attempts remain, else FAILED. Returns the counts
        (given back, to retry, failed).
        """
        return self._dialect().rescue(
            worker_id, reason, now or timezone.now(),
            None if job_ids is None else list(job_ids),
        )

    def tune_connection(self) -> None:
        """Prepare this thread's connection for a worker's broker traffic (and only that)."""
        self._dialect().tune()

    def held_by(self, worker_id: str) -> list[str]:
        """Ids of the jobs ``worker_id`` holds (claimed or running)."""
        from ..models import Job

        ids = Job.objects.using(self.database).held().filter(worker_id=worker_id)
        return [str(i) for i in ids.values_list("id", flat=True)]

    def wake_source(self) -> PostgresListener | None:
        """A waitable that becomes readable when jobs are enqueued, or None to poll."""
        if self.config.notify and self.connection.vendor == "postgresql":
            return PostgresListener(self.connection)
        return None

    # -- worker registry -----------------------------------------------------------

    def register_worker(self, **fields: Any) -> None:
        """Record a worker as running (again, if the id was used before)."""
        from ..models import Worker

        # Two autocommit statements rather than update_or_create's transaction: on SQLite
        # a read-then-write transaction fails at once ("database is locked") when another
        # worker writes in between, while single statements wait their turn.
        worker_id = fields.pop("id")
        fields.setdefault("stopped_at", None)
        fields.setdefault("stop_reason", "")
        if not Worker.objects.using(self.database).filter(id=worker_id).update(**fields):
            Worker.objects.using(self.database).create(id=worker_id, **fields)

    def heartbeat(self, worker_id: str, now: datetime | None = None) -> bool:
        """Record that ``worker_id`` is alive at ``now``; False if it was declared dead."""
        from ..models import Worker

        return bool(
            Worker.objects.using(self.database).running().filter(id=worker_id)
            .update(last_heartbeat_at=now or timezone.now())
        )

    def unregister_worker(self, worker_id: str, now: datetime | None = None,
                          reason: str = "shutdown") -> None:
        """Mark ``worker_id`` stopped; whatever it still holds becomes rescuable at once."""
        from ..models import Worker

        Worker.objects.using(self.database).filter(id=worker_id).update(
            stopped_at=now or timezone.now(), stop_reason=reason[:200]
        )

    def rescue_orphans(self, rescuer_id: str, now: datetime | None = None,
                       is_gone: Any = None) -> list[tuple[str, str, tuple[int, int, int]]]:
        """Declare dead the workers that stopped heart-beating, and free every job held by
        a worker that is not running (stopped, declared dead, or unknown).

        A worker is dead when its last heartbeat is older than ``WORKER_TIMEOUT``, or at
        once when ``is_gone(worker)`` says its process no longer exists (a check only a
        worker on the same host can make). Returns ``(worker id, reason, counts)`` for
        each worker whose jobs were rescued.
        """
        from ..models import Job, Worker

        now = now or timezone.now()
        workers = Worker.objects.using(self.database)
        timeout = self.config.worker_timeout
        for w in workers.expired(now, timeout).exclude(id=rescuer_id):
            silent = (now - w.last_heartbeat_at).total_seconds()
            self._declare_dead(w.id, f"declared dead by {rescuer_id}: no heartbeat for "
                                     f"{silent:.0f} s (WORKER_TIMEOUT {timeout:g} s)", now)
        if is_gone is not None:
            for w in workers.running().exclude(id=rescuer_id):
                if is_gone(w):
                    self._declare_dead(w.id, f"declared dead by {rescuer_id}: process "
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

    def _declare_dead(self, worker_id: str, reason: str, now: datetime) -> None:
        from ..models import Worker

        Worker.objects.using(self.database).running().filter(id=worker_id).update(
            stopped_at=now, stop_reason=reason[:200]
        )

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        if self.database in connections.settings:
            vendor = connections[self.database].vendor
            if vendor not in _DIALECTS:
                errors.append(checks.Error(
                    f"TASKS[{self.alias!r}]: the database broker supports PostgreSQL and "
                    f"SQLite; database {self.database!r} is {vendor}.",
                    id="django_tasks.E005",
                ))
        return errors
