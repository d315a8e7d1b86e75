"""The database broker: the job table is the queue.

Every statement is the job store's (:mod:`django_tasks.jobs.postgresql`,
:mod:`django_tasks.jobs.sqlite`): a claim is ``ByQueues`` (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, many jobs per round trip, one statement with the starts and outcomes; SQLite:
one ``UPDATE … RETURNING``, which holds SQLite's single write lock). This broker adds
waking: on PostgreSQL idle workers ``LISTEN`` on one channel per queue and an enqueue
NOTIFYs its queue's channel in the INSERT's own statement. Enqueueing is a plain INSERT
on the caller's connection: inside ``transaction.atomic()`` the job is part of that
transaction, invisible to workers until commit and gone on rollback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core import checks

from ..jobs.messages import ByQueues, Message, NewJob, Outcome, Start
from ..states import READY
from .base import Broker, BrokerOptions, Exchanged, ModelBackend

__all__ = ["DatabaseBackend", "DatabaseBroker", "DatabaseOptions"]

CHANNEL_PREFIX = "django_tasks:"


def channel(queue: str) -> str:
    """The NOTIFY channel of ``queue``: a worker LISTENs only to the queues it serves."""
    name = CHANNEL_PREFIX + queue
    if len(name.encode()) > 63:  # PostgreSQL truncates identifiers to 63 bytes
        name = CHANNEL_PREFIX + hashlib.sha1(queue.encode()).hexdigest()
    return name


def _outage_errors() -> tuple[type[BaseException], ...]:
    from django.db import DatabaseError

    try:  # the LISTEN connection is psycopg's own, not Django's
        import psycopg
    except ImportError:
        return (DatabaseError,)
    return (DatabaseError, psycopg.Error)


@dataclass(frozen=True)
class DatabaseOptions(BrokerOptions):
    #: OPTIONS["NOTIFY"]: wake idle workers on enqueue, where the database can.
    notify: bool = True


class DatabaseBroker(Broker):
    """Messages are the job rows themselves; see the module docstring."""

    supports_transactional_publish = True
    outage_errors = _outage_errors()
    options: DatabaseOptions

    @classmethod
    def options_from(cls, backend: ModelBackend) -> DatabaseOptions:
        return DatabaseOptions(alias=backend.alias, notify=backend.config.notify)

    @property
    def supports_wakeup(self) -> bool:  # type: ignore[override]
        return self.options.notify and self.store.notifies

    def publish(self, job: Any) -> bool:
        """INSERT the job on the caller's connection, in the caller's transaction (and
        where workers are woken, NOTIFY its queue's channel in the same statement,
        delivered at commit). A unique job whose key is held: nothing inserted, nobody
        notified."""
        if not self.supports_wakeup:
            return self.store.insert(job)
        return self.store.insert(job, notify=channel(job.queue_name))

    def publish_many(self, jobs: Sequence[NewJob], *,
                     meanwhile: Iterator[None] | None = None) -> set[str] | None:
        """INSERT the jobs, one statement per batch, in the caller's transaction; where
        workers are woken, each statement also NOTIFYs the channels of the queues of its
        READY jobs (once each, never once per job), delivered at commit."""
        channels = ()
        if self.supports_wakeup:
            channels = sorted(map(channel, {j.queue_name for j in jobs if j.status == READY}))
        return self.store.insert_many(jobs, channels=channels, meanwhile=meanwhile)

    def republish(self, job_ids: Sequence[str]) -> None:
        """The rows are the messages: only wake the workers of their queues."""
        if self.supports_wakeup and job_ids:
            self._wake(self.store.queues_of(job_ids))

    def give_back(self, messages: Sequence[Message]) -> int:
        """READY again, untouched; the workers of their queues are woken (a stopping
        worker's buffer, or jobs it could not start soon: another worker may be idle)."""
        released = self.store.give_back(messages)
        if released and self.supports_wakeup:
            self._wake({m.queue_name for m in messages})
        return released

    def _wake(self, queues: Iterable[str]) -> None:
        """NOTIFY the channels of ``queues`` (at commit, in a transaction)."""
        self.store.notify([channel(q) for q in sorted(queues)])

    def claim(self, worker_id: str, lease: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[Message]:
        return self.store.claim(worker_id, lease, ByQueues(queues, limit), now).claimed

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), queues: Sequence[str] = (),
                 limit: int = 0, now: datetime | None = None) -> Exchanged:
        """One store round trip: one statement on PostgreSQL (starts, outcomes, claim)."""
        return self.store.exchange(worker_id, lease=lease, starts=starts, outcomes=outcomes,
                                   claim=ByQueues(queues, limit), now=now)

    def wake_source(self, queues: Sequence[str]) -> Any | None:
        if self.supports_wakeup and queues:
            return self.store.listen([channel(q) for q in queues])
        return None

    def check(self) -> list[checks.CheckMessage]:
        unsupported = self.store.engine.unsupported
        if unsupported is not None:
            return [checks.Error(
                f"TASKS[{self.alias!r}]: the database broker supports PostgreSQL "
                f"and SQLite; database {self.store.database!r} is {unsupported}.",
                id="django_tasks.E005",
            )]
        return []


class DatabaseBackend(ModelBackend):
    """Jobs, results and the queue in one table of your database.

    ``TASKS = {"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend"}}``
    """

    broker_class = DatabaseBroker
