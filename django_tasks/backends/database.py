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
from django.tasks import TaskResultStatus
from django.utils import timezone

from ..serialization import dumps
from .base import ModelBackend, as_datetime

__all__ = ["DatabaseBackend"]

CHANNEL = "django_tasks"
READY, RUNNING = TaskResultStatus.READY.value, TaskResultStatus.RUNNING.value

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
    """The few SQL fragments that differ between vendors."""

    vendor = ""
    append_worker = ""  # expression appending the %s worker id to worker_ids
    drop_last_worker = ""
    append_error = ""  # expression appending the %s JSON error to errors
    lock = ""

    def __init__(self, connection: Any, table: str) -> None:
        self.connection = connection
        self.table = connection.ops.quote_name(table)

    def time(self, value: datetime | None) -> Any:
        return self.connection.ops.adapt_datetimefield_value(value)

    def job_id(self, value: str) -> Any:
        # SQLite stores UUIDField as 32 hex digits.
        return uuid.UUID(value).hex

    def claim_sql(self, nqueues: int) -> str:
        queues = ", ".join(["%s"] * nqueues)
        return (
            f"UPDATE {self.table} SET status = '{RUNNING}', worker_id = %s, "
            f"attempts = attempts + 1, started_at = COALESCE(started_at, %s), "
            f"last_attempted_at = %s, worker_ids = {self.append_worker} "
            f"WHERE id IN (SELECT id FROM {self.table} WHERE status = '{READY}' "
            f"AND queue_name IN ({queues}) AND backend = %s AND available_at <= %s "
            f"ORDER BY priority DESC, available_at LIMIT %s{self.lock}) "
            f"RETURNING {', '.join(_CLAIM_COLUMNS)}"
        )

    def claim(self, worker_id: str, backend: str, queues: Sequence[str], limit: int,
              now: datetime) -> list[tuple]:
        t = self.time(now)
        with self.connection.cursor() as cursor:
            cursor.execute(
                self.claim_sql(len(queues)),
                [worker_id, t, t, worker_id, *queues, backend, t, limit],
            )
            return cursor.fetchall()

    def complete(self, worker_id: str, outcomes: Sequence[dict[str, Any]]) -> None:
        sql = (
            f"UPDATE {self.table} SET status = %s, return_value = %s, "
            f"errors = CASE WHEN %s IS NULL THEN errors ELSE {self.append_error} END, "
            f"finished_at = %s, available_at = COALESCE(%s, available_at) "
            f"WHERE id = %s AND worker_id = %s AND status = '{RUNNING}'"
        )
        rows = []
        for o in outcomes:
            rv = o.get("return_value")
            error = dumps(o["error"]) if o.get("error") else None
            rows.append((
                o["status"], None if rv is None else dumps(rv), error, error,
                self.time(as_datetime(o.get("finished_at"))),
                self.time(as_datetime(o.get("available_at"))),
                self.job_id(o["id"]), worker_id,
            ))
        with transaction.atomic(using=self.connection.alias), self.connection.cursor() as c:
            c.executemany(sql, rows)

    def release(self, worker_id: str, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        marks = ", ".join(["%s"] * len(job_ids))
        sql = (
            f"UPDATE {self.table} SET status = '{READY}', worker_id = '', "
            f"attempts = attempts - 1, worker_ids = {self.drop_last_worker}, "
            f"started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END, "
            f"last_attempted_at = CASE WHEN attempts <= 1 THEN NULL ELSE last_attempted_at END "
            f"WHERE id IN ({marks}) AND worker_id = %s AND status = '{RUNNING}'"
        )
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [*(self.job_id(i) for i in job_ids), worker_id])
            return cursor.rowcount

    def notify(self, queue_name: str) -> None:
        """Wake idle workers (no-op where there is no notification channel)."""


class _SQLite(_Dialect):
    vendor = "sqlite"
    append_worker = "json_insert(worker_ids, '$[#]', %s)"
    drop_last_worker = "json_remove(worker_ids, '$[#-1]')"
    append_error = "json_insert(errors, '$[#]', json(%s))"


class _PostgreSQL(_Dialect):
    vendor = "postgresql"
    append_worker = "worker_ids || jsonb_build_array(%s::text)"
    drop_last_worker = "worker_ids - -1"
    append_error = "errors || jsonb_build_array(%s::jsonb)"
    lock = " FOR UPDATE SKIP LOCKED"

    def time(self, value: datetime | None) -> Any:
        return value

    def job_id(self, value: str) -> Any:
        return uuid.UUID(value)

    def complete(self, worker_id: str, outcomes: Sequence[dict[str, Any]]) -> None:
        # One statement, one commit, however many outcomes: the batch completer.
        payload = dumps([
            {
                "id": o["id"],
                "status": o["status"],
                "return_value": o.get("return_value"),
                "error": o.get("error"),
                "finished_at": o.get("finished_at"),
                "available_at": o.get("available_at"),
            }
            for o in outcomes
        ])
        sql = (
            f"UPDATE {self.table} AS j SET status = o.status, "
            f"return_value = CASE WHEN jsonb_typeof(o.return_value) = 'null' THEN NULL "
            f"ELSE o.return_value END, "
            f"errors = CASE WHEN o.error IS NULL OR jsonb_typeof(o.error) = 'null' "
            f"THEN j.errors ELSE j.errors || jsonb_build_array(o.error) END, "
            f"finished_at = o.finished_at, available_at = COALESCE(o.available_at, j.available_at) "
            f"FROM jsonb_to_recordset(%s::jsonb) AS o(id uuid, status text, return_value jsonb, "
            f"error jsonb, finished_at timestamptz, available_at timestamptz) "
            f"WHERE j.id = o.id AND j.worker_id = %s AND j.status = '{RUNNING}'"
        )
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [payload, worker_id])

    def notify(self, queue_name: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue_name])


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

        Job(**fields).save(force_insert=True, using=self.database)
        if self.config.notify:
            self._dialect().notify(fields["queue_name"])

    # -- worker side (the broker interface) ---------------------------------------------

    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[dict[str, Any]]:
        """Atomically take up to ``limit`` ready jobs for ``worker_id``, best first.

        Each claimed job is RUNNING, held by ``worker_id``, with its attempt counted.
        No other worker can claim it until it is completed or released.
        """
        if limit <= 0 or not queues:
            return []
        now = now or timezone.now()
        rows = self._dialect().claim(worker_id, self.alias, list(queues), limit, now)
        messages = []
        for row in rows:
            message = dict(zip(_CLAIM_COLUMNS, row, strict=True))
            for key in _JSON_COLUMNS:
                if isinstance(message[key], str):
                    message[key] = json.loads(message[key])
            for key in _TIME_COLUMNS:
                message[key] = _iso(message[key])
            message["id"] = str(uuid.UUID(str(message["id"])))
            messages.append(message)
        # RETURNING has no order: restore the claim order (ISO strings, all UTC, sort
        # like the times they name).
        messages.sort(key=lambda m: (-m["priority"], m["available_at"]))
        return messages

    def complete(self, worker_id: str, outcomes: Sequence[dict[str, Any]]) -> None:
        """Record outcomes of jobs held by ``worker_id``, all in one transaction.

        An outcome for a job this worker no longer holds is ignored, so a job
        rescued from a worker presumed dead is never overwritten by it.
        """
        if outcomes:
            self._dialect().complete(worker_id, outcomes)

    def release(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Give back jobs claimed by ``worker_id`` but never started; their attempt is uncounted."""
        return self._dialect().release(worker_id, list(job_ids))

    def wake_source(self) -> PostgresListener | None:
        """A waitable that becomes readable when jobs are enqueued, or None to poll."""
        if self.config.notify and self.connection.vendor == "postgresql":
            return PostgresListener(self.connection)
        return None

    # -- worker registry -----------------------------------------------------------

    def register_worker(self, **fields: Any) -> None:
        from ..models import Worker

        # Two autocommit statements rather than update_or_create's transaction: on SQLite
        # a read-then-write transaction fails at once ("database is locked") when another
        # worker writes in between, while single statements wait their turn.
        worker_id = fields.pop("id")
        if not Worker.objects.using(self.database).filter(id=worker_id).update(**fields):
            Worker.objects.using(self.database).create(id=worker_id, **fields)

    def heartbeat(self, worker_id: str, now: datetime | None = None) -> None:
        """Record that ``worker_id`` is alive at ``now``."""
        from ..models import Worker

        Worker.objects.using(self.database).filter(id=worker_id).update(
            last_heartbeat_at=now or timezone.now()
        )

    def unregister_worker(self, worker_id: str, now: datetime | None = None) -> None:
        from ..models import Worker

        Worker.objects.using(self.database).filter(id=worker_id).update(
            stopped_at=now or timezone.now()
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
