"""What the job store asks of its database: the interface of the two engines.

The store (:class:`~django_tasks.jobs.store.JobStore`) picks one engine when it is built,
by its database's vendor, and never asks again (as Oban picks ``engines/basic.ex`` or
``engines/lite.ex``): :class:`~django_tasks.jobs.postgresql.PostgreSQL` or
:class:`~django_tasks.jobs.sqlite.SQLite`. Each engine module holds every statement its
database runs, named, with the reason it is written that way; the few both run as
written are in :mod:`django_tasks.jobs.portable` and run by this base class.

Where the two databases differ in code rather than text, an engine method says how:
how a job id and a time are passed (:meth:`Engine.job_id`, :meth:`Engine.time`), whose
clock ``now`` is (:meth:`Engine.now`), lists of ids, and the worker's round trip in one
statement or in three parts in one transaction (:meth:`Engine.exchange`). JSON comes
back as text from both (:meth:`Engine.decode` reads it, the one place). The store holds
the policy (outcome hooks, what a failure means); an engine only reads and writes rows.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import Any, Protocol, TypeVar

from django.db import connections, transaction
from django.db.utils import ConnectionDoesNotExist

from .messages import Applied, ByIds, ByQueues, NewJob, Outcome, Start
from .portable import (
    CANCEL_REQUESTED,
    CANCELLED_CLAIMS,
    CANCELLING_OF,
    COUNT,
    DECREMENT,
    ENSURE_RATE,
    GIVE_BACK,
    GIVE_BACK_ALL,
    GIVE_BACK_AT,
    HOLDERS,
    RUNNING_OF,
    TAKE_PERIOD,
    TOTAL,
    TOTAL_COLUMNS,
    UNIQUE_ACTIVE,
    UNIQUE_RECENT,
)
from .rows import (
    JSON_COLUMNS,
    CancelledClaim,
    Cancelling,
    Decremented,
    FailedStep,
    MessageRow,
    RunningRow,
)
from .side import on_side
from .tally import COLUMNS as COUNT_COLUMNS
from .tally import Written, tally

__all__ = ["Engine", "RoundTrip", "Unavailable"]

Row = TypeVar("Row", bound=tuple[Any, ...])


@cache
def _json_positions(row_type: type) -> tuple[int, ...]:
    """Where a row type's JSON columns are (decoding is on the hot path: once per claimed
    job and per outcome written)."""
    return tuple(i for i, name in enumerate(row_type._fields)  # type: ignore[attr-defined]
                 if name in JSON_COLUMNS)


#: The JSON texts most rows hold (no arguments, no errors or workers yet), made without
#: the parser: ``json.loads`` costs ~1.4 us a call however short the text, and a claimed
#: row has five JSON columns. A new object each time: callers may change it.
_EMPTY_JSON: dict[str, Callable[[], Any]] = {"[]": list, "{}": dict}


#: The running totals' counting columns (all but the key's).
_TOTAL_COUNTS = tuple(c for c in TOTAL_COLUMNS
                      if c not in ("backend", "queue_name", "task_path", "outcome"))

class RoundTrip(Protocol):
    """What the store lends an engine for the worker's round trip (:meth:`Engine.exchange`):
    its policy, which no engine repeats."""

    def exchange_parts(self, worker_id: str, lease: str, starts: Sequence[Start],
                       outcomes: Sequence[Outcome], claim: ByQueues | ByIds,
                       now: datetime | None) -> tuple[list[MessageRow], list[Applied]]:
        """Record starts, write outcomes (hooks, a failing hook failing its job alone),
        claim: three parts, in the caller's transaction if there is one."""

    def write_with_hooks(self, outcomes: Sequence[Outcome],
                         write: Callable[[], tuple[list[Row], list[Any]]],
                         ) -> tuple[list[Row], list[Applied]]:
        """Run ``write`` (one statement writing ``outcomes``: its other rows and the
        outcome rows written) with the outcome hooks in its transaction; raises
        ``OutcomeHookFailed``, all of it rolled back, if a hook fails."""


class Engine(ABC):
    """The rows of one backend (``backend``) in one database (``database``)."""

    #: The database can wake listeners at commit (NOTIFY on insert, LISTEN).
    notifies: bool = False
    #: A transaction may commit without waiting for the disk (``insert_one``'s
    #: ``no_disk_wait``; OPTIONS["ASYNCHRONOUS_COMMIT"]).
    commits_without_disk_wait: bool = False
    #: Statements prepared once per connection where the database has them
    #: (``OPTIONS["PREPARED_STATEMENTS"]``, set by the backend).
    prepared: bool = True
    #: None: django_tasks can store jobs here (see :class:`Unavailable`).
    unsupported: str | None = None

    def __init__(self, backend: str, database: str) -> None:
        self.backend = backend
        self.database = database

    @property
    def connection(self) -> Any:
        return connections[self.database]

    def cursor(self) -> Any:
        """A cursor for this engine's statements (Django's, so errors, transactions and
        query logging behave as everywhere else)."""
        return self.connection.cursor()

    def prepare_worker_connection(self) -> None:
        """Set up the calling thread's connection for a worker's round trips (the broker
        thread's own connection, which runs nothing else). Nothing to do by default."""
        return None

    # -- values ---------------------------------------------------------------------------

    @abstractmethod
    def job_id(self, value: str) -> Any:
        """A job id as this database's driver takes it."""

    @abstractmethod
    def time(self, value: str | datetime | None) -> Any:
        """A time (ISO string or datetime) as this database's driver takes it."""

    @abstractmethod
    def now(self) -> datetime:
        """The database's clock: what liveness and expiry are judged by."""

    def decode(self, row: Row) -> Row:
        """``row`` (a named tuple) with its JSON columns as Python values: the one place
        they are read. Django's connections return JSON as text on both databases (its
        JSONField decodes it, raw cursors do not: Django registers jsonb's loader as
        text on PostgreSQL)."""
        positions = _json_positions(type(row))
        values = list(row)
        for i in positions:
            value = values[i]
            if isinstance(value, str):
                empty = _EMPTY_JSON.get(value)
                values[i] = empty() if empty is not None else json.loads(value)
        return row._make(values)  # type: ignore[attr-defined]

    # -- the round trip -------------------------------------------------------------------

    @abstractmethod
    def record_starts(self, worker_id: str, starts: Sequence[Start]) -> int:
        """Mark claimed jobs RUNNING (attempt counted) where the lease still holds them."""

    @abstractmethod
    def write_outcomes(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Applied]:
        """Write outcomes whose lease still holds the job; the rows written (undecoded)."""

    @abstractmethod
    def claim(self, worker_id: str, lease: str, claim: ByQueues | ByIds,
              now: datetime | None) -> list[MessageRow]:
        """Take jobs under ``lease``; ``now`` None means the database's clock."""

    def exchange(self, store: RoundTrip, worker_id: str, lease: str, starts: Sequence[Start],
                 outcomes: Sequence[Outcome], claim: ByQueues | ByIds,
                 now: datetime | None) -> tuple[list[MessageRow], list[Applied]]:
        """The worker's round trip: record ``starts``, write ``outcomes`` (with their
        hooks), then claim; returns the rows claimed and the outcome rows written.

        Here the three parts in one transaction: one commit, and on SQLite one write lock
        for the three parts (SQLite has one writer at a time).
        """
        with transaction.atomic(using=self.database):
            return store.exchange_parts(worker_id, lease, starts, outcomes, claim, now)

    # -- statistics -----------------------------------------------------------------------

    def count(self, written: Sequence[Written], now: datetime) -> None:
        """Add ``written`` (outcomes written: :data:`.tally.Written`) to the statistics
        of ``now``'s minute, in the caller's transaction."""
        self.add_counts(tally(now, self.backend, written))

    def add_counts(self, rows: Sequence[dict[str, Any]], *, totals: bool = True) -> None:
        """Add tally rows (:func:`.tally.rows`) to the statistics table, and with
        ``totals`` to the running totals (``django_tasks_total``): one upsert each. Only a
        roll-up, which moves counts between minutes, passes ``totals=False``."""
        if not rows:
            return
        with self.cursor() as cursor:
            cursor.executemany(COUNT, [{**row, "minute": self.time(row["minute"])}
                                       for row in rows])
        if totals:
            self.add_totals(rows)

    def add_totals(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add tally rows to the running totals only (counts no minute keeps: ENQUEUED,
        RESCUED), in the caller's transaction: one upsert per key, the rows of several
        minutes summed, in key order (concurrent writers lock the rows in one order)."""
        sums: dict[tuple[str, ...], dict[str, Any]] = {}
        for row in rows:
            key = (row["backend"], row["queue_name"], row["task_path"], row["outcome"])
            total = sums.get(key)
            if total is None:
                sums[key] = {c: row[c] for c in TOTAL_COLUMNS}
            else:
                for c in _TOTAL_COUNTS:
                    total[c] += row[c]
        if sums:
            with self.cursor() as cursor:
                cursor.executemany(TOTAL, [sums[k] for k in sorted(sums)])

    def take_period(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Delete this backend's statistics rows from ``start`` to before ``end`` and
        return them (in the caller's transaction)."""
        with self.cursor() as cursor:
            cursor.execute(TAKE_PERIOD, {"backend": self.backend, "start": self.time(start),
                                         "end": self.time(end)})
            return [dict(zip(COUNT_COLUMNS, row, strict=True)) for row in cursor.fetchall()]

    # -- statements both databases run as written --------------------------------------

    def insert_one(self, job: NewJob, *, notify: str | None = None,
                   no_disk_wait: bool = False) -> bool:
        """INSERT one new job (checked already), in the caller's transaction; False, having
        inserted nothing, if it is unique and an active job holds its key. ``notify``: a
        channel to NOTIFY in the same statement if it was inserted (where the database
        :attr:`notifies`). ``no_disk_wait``: the transaction's commit does not wait for
        the disk, where the database can say so per transaction (PostgreSQL; ignored
        here). Here a batch of one; PostgreSQL has a statement of its own."""
        inserted = self.insert_many([job], unique=bool(job.unique_key),
                                    channels=() if notify is None else (notify,))
        return inserted is None or job.id in inserted

    @abstractmethod
    def insert_many(self, jobs: Sequence[NewJob], *, unique: bool,
                    channels: Sequence[str] = ()) -> set[str] | None:
        """INSERT ``jobs`` in one statement, in the caller's transaction. With ``unique``
        a job whose key an active job holds is not inserted, and the ids inserted are
        returned (None without ``unique``). ``channels``: NOTIFY each, at commit, in the
        same statement, if a row was inserted (where the database :attr:`notifies`)."""

    def copy_many(self, jobs: Sequence[NewJob], *, channels: Sequence[str] = (),
                  meanwhile: Iterator[None] | None = None) -> bool:
        """Store ``jobs`` (none unique) by the database's bulk load, in the caller's
        transaction, notifying ``channels`` at commit; False (nothing done) where there
        is none or it would not pay: then they are INSERTed. ``meanwhile``: the caller's
        work in steps, one run after each chunk sent, while the database loads it."""
        return False

    def unique_holder(self, key: str, since: datetime | None) -> Any | None:
        # The model is imported when first needed: models cannot be imported while the
        # app registry is loading, and backends (so stores) may be built then.
        from ..models import Job

        params: dict[str, Any] = {"backend": self.backend, "key": key}
        if since is None:
            sql = UNIQUE_ACTIVE
        else:
            sql, params["since"] = UNIQUE_RECENT, self.time(since)
        return next(iter(Job.objects.db_manager(self.database).raw(sql, params)), None)

    def give_back(self, held: Sequence[tuple[str, str]]) -> int:
        """``(id, lease)`` claimed, never started, not asked to cancel: READY again."""
        with self.cursor() as cursor:
            cursor.executemany(GIVE_BACK, [{"id": self.job_id(i), "lease": lease}
                                           for i, lease in held])
            return cursor.rowcount

    def give_back_at(self, held: Sequence[tuple[str, str]], at: datetime) -> int:
        """``(id, lease)`` claimed, never started, not asked to cancel: READY again, due
        at ``at`` (a rate limit's next free slot)."""
        with self.cursor() as cursor:
            cursor.executemany(GIVE_BACK_AT, [{"id": self.job_id(i), "lease": lease,
                                               "at": self.time(at)} for i, lease in held])
            return cursor.rowcount

    def reserve(self, key: str, interval: float, want: int,
                horizon: float) -> tuple[float, int, float]:
        """Reserve up to ``want`` start slots of rate-limited ``key`` within ``horizon``
        seconds (``RESERVE_SLOTS``): ``(next_at, granted, now)`` in seconds since the
        epoch; the first slot granted is ``next_at - granted * interval``."""
        params = {"backend": self.backend, "key": key, "interval": interval, "want": want,
                  "horizon": horizon}
        with self.cursor() as cursor:
            cursor.execute(ENSURE_RATE, params)
            cursor.execute(self.reserve_sql, params)
            next_at, granted, now = cursor.fetchone()
        return float(next_at), int(granted), float(now)

    def give_back_all(self, worker_id: str) -> int:
        with self.cursor() as cursor:
            cursor.execute(GIVE_BACK_ALL, {"worker": worker_id})
            return cursor.rowcount

    def holders(self) -> list[str]:
        """The ids of the workers holding jobs (claimed or running, under a lease)."""
        with self.cursor() as cursor:
            cursor.execute(HOLDERS)
            return [row[0] for row in cursor.fetchall()]

    def running_of(self, worker_id: str) -> list[RunningRow]:
        with self.cursor() as cursor:
            cursor.execute(RUNNING_OF, {"worker": worker_id})
            return [RunningRow._make(row) for row in cursor.fetchall()]

    def cancelled_claims(self, worker_id: str) -> list[CancelledClaim]:
        with self.cursor() as cursor:
            cursor.execute(CANCELLED_CLAIMS, {"worker": worker_id})
            return [CancelledClaim._make(row) for row in cursor.fetchall()]

    def cancelling_of(self, worker_id: str) -> list[Cancelling]:
        with self.cursor() as cursor:
            cursor.execute(CANCELLING_OF, {"worker": worker_id})
            return [self.decode(Cancelling._make(row)) for row in cursor.fetchall()]

    def cancel_requested(self, job_id: str) -> bool:
        """As committed now: read on the side connection."""
        params = {"id": self.job_id(job_id)}
        return on_side(self.database, lambda cursor: (cursor.execute(CANCEL_REQUESTED, params),
                                                      cursor.fetchone())[1]) is not None

    def decrement(self, job_id: str, n: int) -> Decremented | None:
        with self.cursor() as cursor:
            cursor.execute(DECREMENT, {"n": n, "id": self.job_id(job_id)})
            row = cursor.fetchone()
        return None if row is None else Decremented._make(row)

    # -- statements spelled per database -------------------------------------------------

    #: This database's spelling of two statements whose code is the same on both
    #: (each engine module's FAIL_WAITING and PROGRESS).
    fail_waiting_sql: str
    reserve_sql: str
    progress_sql: str

    def fail_waiting(self, job_id: str, error: str, now: datetime) -> FailedStep | None:
        """A WAITING workflow step FAILED with ``error`` (JSON); None if it was not
        waiting (undecoded)."""
        with self.cursor() as cursor:
            cursor.execute(self.fail_waiting_sql, {"now": self.time(now), "error": error,
                                                   "id": self.job_id(job_id)})
            row = cursor.fetchone()
        return None if row is None else FailedStep._make(row)

    @abstractmethod
    def cancel_unheld(self, ids: Sequence[str], error: str, now: datetime) -> list[Applied]:
        """READY or WAITING jobs of ``ids`` CANCELLED with ``error``; the rows written."""

    @abstractmethod
    def cancel_held(self, ids: Sequence[str], error: str) -> list[Any]:
        """Held jobs of ``ids`` marked to cancel; their ids."""

    def report_progress(self, job_id: str, progress: str, lease: str) -> bool:
        """Store a held job's latest progress report (JSON) where ``lease`` holds it (any
        lease if ``lease`` is empty), seen by others at once (:meth:`side_write`)."""
        return self.side_write(self.progress_sql, {"progress": progress,
                                                   "id": self.job_id(job_id), "lease": lease})

    def side_write(self, sql: str, params: dict[str, Any]) -> bool:
        """Run a write on the side connection (autocommit: others see it at once), or, if
        the row is only in the caller's own transaction, in it; whether it wrote."""
        own = self.connection
        if self.writes_in_own_transaction(own):
            with own.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.rowcount > 0
        written = on_side(self.database, lambda cursor: (cursor.execute(sql, params),
                                                         cursor.rowcount)[1])
        if not written and own.in_atomic_block:
            # The row may exist only in the caller's own uncommitted transaction (a test
            # wrapped in one, a job enqueued and run inline): write it there.
            with own.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.rowcount > 0
        return written > 0

    def writes_in_own_transaction(self, own: Any) -> bool:
        """Whether a side write must go through ``own`` (the caller's connection) instead."""
        return False

    # -- waking workers ------------------------------------------------------------------

    def notify(self, channels: Sequence[str]) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no NOTIFY")

    def listen(self, channels: Sequence[str]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no LISTEN")


class Unavailable:
    """The engine of a database django_tasks cannot store jobs in (neither PostgreSQL nor
    SQLite: ``unsupported`` names it, for ``manage.py check``), or of an alias that is not
    in DATABASES (``unsupported`` None: the backend's check says so): every use raises,
    saying which."""

    notifies = False

    def __init__(self, database: str, unsupported: str | None) -> None:
        self.database = database
        self.unsupported = unsupported

    def __getattr__(self, name: str) -> Any:
        if self.unsupported is None:
            raise ConnectionDoesNotExist(f"The connection '{self.database}' doesn't exist.")
        raise NotImplementedError(
            f"django_tasks stores jobs in PostgreSQL or SQLite, not {self.unsupported}."
        )
