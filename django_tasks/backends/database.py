"""The database broker: the job table is the queue.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (many jobs per round trip, one
statement) and wakes idle workers with ``LISTEN/NOTIFY`` on one channel per queue;
SQLite claims with one ``UPDATE … RETURNING`` statement, which holds SQLite's single
write lock for its duration, so concurrent workers never claim the same job.
Enqueueing is a plain INSERT on the caller's connection: inside
``transaction.atomic()`` the job is part of that transaction, invisible to workers
until commit and gone on rollback.

A claim walks each queue it serves in its own index order and merges the heads
(``CROSS JOIN LATERAL``), so it reads about LIMIT rows per queue whatever the other
queues hold, and the plan needs no planner settings: with the queue fixed by
equality, the index order *is* the claim order, even when the table's statistics are
stale right after a burst of enqueues.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core import checks
from django.db import connections, transaction
from django.utils import timezone

from ..exceptions import OutcomeHookFailed
from ..jobs.messages import Message, Outcome, Start
from ..jobs.statements import MESSAGE_COLUMNS, exchange_pg
from ..states import CLAIMED, READY
from .base import Broker, Exchanged, ModelBackend, stale_of

__all__ = ["DatabaseBackend", "DatabaseBroker"]

CHANNEL_PREFIX = "django_tasks:"

_RETURNING = "RETURNING " + ", ".join(MESSAGE_COLUMNS)

CLAIM_PG = (
    "UPDATE {table} SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN (SELECT c.id FROM unnest(%(queues)s::text[]) AS q(name) "
    "CROSS JOIN LATERAL (SELECT id, priority, available_at FROM {table} "
    "WHERE status = '" + READY + "' AND backend = %(backend)s AND queue_name = q.name "
    "AND available_at <= COALESCE(%(now)s::timestamptz, statement_timestamp()) "
    "ORDER BY priority DESC, available_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS c "
    "ORDER BY c.priority DESC, c.available_at LIMIT %(limit)s) " + _RETURNING
)
CLAIM_SQLITE = (
    "UPDATE {table} SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN (SELECT id FROM {table} WHERE status = '" + READY + "' "
    "AND backend = %(backend)s AND queue_name IN ({queues}) AND available_at <= %(now)s "
    "ORDER BY priority DESC, available_at LIMIT %(limit)s) " + _RETURNING
)
EXCHANGE_PG = exchange_pg(CLAIM_PG)
# A unique job's INSERT (ON CONFLICT DO NOTHING) that inserted nothing notifies nobody.
INSERT_NOTIFY_PG = "WITH j AS ({insert} RETURNING 1) SELECT pg_notify(%s, '') FROM j"
NOTIFY_PG = "SELECT pg_notify(c, '') FROM unnest(%s::text[]) AS c"


def channel(queue: str) -> str:
    """The NOTIFY channel of ``queue``: a worker LISTENs only to the queues it serves."""
    name = CHANNEL_PREFIX + queue
    if len(name.encode()) > 63:  # PostgreSQL truncates identifiers to 63 bytes
        name = CHANNEL_PREFIX + hashlib.sha1(queue.encode()).hexdigest()
    return name


class PostgresListener:
    """A dedicated autocommit connection LISTENing for enqueues to some queues."""

    def __init__(self, connection: Any, queues: Sequence[str]) -> None:
        import psycopg
        from psycopg import sql

        params = connection.get_connection_params()
        for key in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(key, None)
        self.conn = psycopg.connect(autocommit=True, **params)
        for queue in queues:
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(queue))))

    def fileno(self) -> int:
        return self.conn.fileno()

    def drain(self) -> int:
        """Consume pending notifications without blocking; return how many there were."""
        return sum(1 for _ in self.conn.notifies(timeout=0))

    def close(self) -> None:
        self.conn.close()


def _outage_errors() -> tuple[type[BaseException], ...]:
    from django.db import DatabaseError

    try:  # the LISTEN connection is psycopg's own, not Django's
        import psycopg
    except ImportError:
        return (DatabaseError,)
    return (DatabaseError, psycopg.Error)


class DatabaseBroker(Broker):
    """Messages are the job rows themselves; see the module docstring."""

    supports_transactional_publish = True
    outage_errors = _outage_errors()

    @property
    def supports_wakeup(self) -> bool:  # type: ignore[override]
        return self.backend.config.notify and self.store.vendor == "postgresql"

    def publish(self, job: Any) -> bool:
        """INSERT the job on the caller's connection, in the caller's transaction (and on
        PostgreSQL NOTIFY its queue's channel in the same statement, delivered at commit;
        identical notifications of one transaction fold into one). A unique job whose
        key is held: nothing inserted, nobody notified."""
        if not self.supports_wakeup:
            return self.store.insert(job)
        # One statement, so one round trip, and in autocommit one commit: the job
        # cannot be stored while the caller sees an error from a separate NOTIFY.
        insert_sql, params = self.store.insert_sql(job)
        with self.store.connection.cursor() as cursor:
            cursor.execute(INSERT_NOTIFY_PG.format(insert=insert_sql),
                           [*params, channel(job.queue_name)])
            return bool(cursor.fetchall())  # a row if inserted (and notified)

    def republish(self, job_ids: Sequence[str]) -> None:
        """The rows are the messages: only wake the workers of their queues."""
        if not self.supports_wakeup or not job_ids:
            return
        from ..models import Job

        queues = set(Job.objects.using(self.store.database).filter(pk__in=list(job_ids))
                     .values_list("queue_name", flat=True))
        with self.store.connection.cursor() as cursor:
            cursor.execute(NOTIFY_PG, [[channel(q) for q in sorted(queues)]])

    def _claim_sql(self, queues: Sequence[str]) -> tuple[str, dict[str, Any]]:
        if self.store.vendor == "postgresql":
            return self.store.sql(CLAIM_PG), {"queues": list(queues)}
        names = {f"q{i}": q for i, q in enumerate(queues)}
        placeholders = ", ".join(f"%({n})s" for n in names)
        return self.store.sql(CLAIM_SQLITE.replace("{queues}", placeholders)), names

    def _claim_params(self, worker_id: str, lease: str, limit: int,
                      now: datetime | None) -> dict[str, Any]:
        if now is None and self.store.vendor != "postgresql":
            now = timezone.now()  # SQLite: one host, one clock
        return {"worker": worker_id, "lease": lease, "backend": self.backend.alias,
                "now": self.store.time(now), "limit": limit}

    def claim(self, worker_id: str, lease: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[Message]:
        if limit <= 0 or not queues:
            return []
        sql, params = self._claim_sql(queues)
        params.update(self._claim_params(worker_id, lease, limit, now))
        with self.store.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return self.store.claimed_messages(cursor.fetchall(), worker_id)

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), queues: Sequence[str] = (),
                 limit: int = 0, now: datetime | None = None) -> Exchanged:
        if not queues:
            limit = 0
        if self.store.vendor != "postgresql":
            # SQLite: one transaction (one write lock) for the three parts.
            with transaction.atomic(using=self.store.database):
                return super().exchange(worker_id, lease=lease, starts=starts,
                                        outcomes=outcomes, queues=queues, limit=limit, now=now)
        if not (starts or outcomes or limit > 0):
            return Exchanged([], [], [])
        params = {"queues": list(queues) or [""],
                  **self._claim_params(worker_id, lease, max(0, limit), now)}
        try:
            claimed, applied = self.store.exchange_pg(worker_id, EXCHANGE_PG, params,
                                                      starts, outcomes)
        except OutcomeHookFailed:
            # All of it was rolled back; the parts one by one fail only the jobs whose
            # hooks fail (JobStore.apply_outcomes).
            return super().exchange(worker_id, lease=lease, starts=starts, outcomes=outcomes,
                                    queues=queues, limit=limit, now=now)
        return Exchanged(self.store.claimed_messages(claimed, worker_id), applied,
                         stale_of(outcomes, applied))

    def wake_source(self, queues: Sequence[str]) -> PostgresListener | None:
        if self.supports_wakeup and queues:
            return PostgresListener(self.store.connection, queues)
        return None

    def check(self) -> list[checks.CheckMessage]:
        database = self.store.database
        if database in connections.settings:
            vendor = connections[database].vendor
            if vendor not in ("postgresql", "sqlite"):
                return [checks.Error(
                    f"TASKS[{self.backend.alias!r}]: the database broker supports PostgreSQL "
                    f"and SQLite; database {database!r} is {vendor}.",
                    id="django_tasks.E005",
                )]
        return []


class DatabaseBackend(ModelBackend):
    """Jobs, results and the queue in one table of your database.

    ``TASKS = {"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend"}}``
    """

    broker_class = DatabaseBroker
