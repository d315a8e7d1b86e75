"""The RabbitMQ broker: RabbitMQ carries job ids, job rows stay the truth.

``TASKS = {"default": {"BACKEND": "django_tasks.backends.rabbitmq.RabbitMQBackend",
"OPTIONS": {"URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}}}`` (the vhost is the URL's
path: ``%2F`` is ``/``).

How a job travels
-----------------
1. ``enqueue`` INSERTs the row in the caller's transaction. Once that commits, the job
   id is published, persistent, to its queue: written to the thread's connection
   before the on-commit callback returns, **its confirm read later**
   (:class:`~.connection.Publisher`: a bounded window of unconfirmed messages, sent
   again on a new connection if the one they went on fails). A rollback publishes
   nothing. ``enqueue_many`` waits for all its confirms (one window). A publish that is
   not confirmed (RabbitMQ down, a nack, a producer killed before its confirm) is
   logged and leaves the row READY: the enqueue still succeeds, and a worker publishes
   the row once RabbitMQ is back (the sweep, below).
2. A job that is not due yet (``run_after``, a retry's backoff) is **not** published:
   it waits in the job table and a worker's ``rabbitmq due`` duty publishes it when due.
   Nothing ever sits unacknowledged in RabbitMQ waiting for its time (RabbitMQ's
   consumer timeout closes the channel of a delivery unacknowledged for 30 minutes).
3. A worker consumes its queues (``consumer.py``) with a per-consumer prefetch sized
   to what it can hold (its slots and buffer). Its round trip takes the best buffered
   deliveries (priority, then due time), then the job store claims those ids
   (``ByIds``) where the rows are READY and due, in the same statement that writes
   the outcomes on PostgreSQL. **Only then** are the deliveries acknowledged: a
   delivery for a job that is not READY (run already, cancelled, a duplicate) is
   acknowledged and dropped; one whose row was READY but skipped (locked by another
   transaction) is acknowledged and published again ``LOCKED_RETRY`` seconds later.
   The ack follows the claim, not the run: the lease in the row protects the running
   job, so a delivery stays unacknowledged for milliseconds, never a job's duration.
   An idle worker's claim alone (nothing else to write) commits without waiting for
   the disk, so its deliveries are acknowledged with the worker's next round trip that
   does wait (the start record, within 50 ms), or given back if a round trip fails
   first: a PostgreSQL crash may have lost that claim (docs/reliability.md).
4. A worker killed with ``kill -9``: RabbitMQ requeues its unacknowledged deliveries;
   its claimed rows are rescued from the job table as with every broker, and the
   rescuer publishes them again (:meth:`RabbitMQBroker.recover`).

Topology
--------
One durable classic queue per task queue, ``<PREFIX>.<queue>`` (PREFIX defaults to
``django_tasks.<alias>.<8 hex digits naming the job table's database>``), with
``x-max-priority`` 9, on the default exchange; declared (idempotently, the same
arguments every time) by producers before their first publish to it and by workers
before they consume. Messages: body = the job id; ``priority`` 0-9 (our -100..100
scaled); headers ``priority`` (ours) and ``due_ms``. A bulk enqueue's message carries up
to ``PACK`` (25) ids separated by spaces (RabbitMQ's CPU is per message); a worker
acknowledges it once each of its ids is claimed or dropped (``consumer.Parcel``).

Classic, not quorum, queues: RabbitMQ 3.10's quorum queues ignore priorities, and the
job's priority must be honoured; per-priority quorum queues would need a consumer
per priority whose prefetches RabbitMQ fills round-robin, which orders nothing. On
one node a durable classic queue with persistent, confirmed messages survives a
restart as a quorum queue does; replication across a cluster is what is given up
(the rows, not the queue, are the truth: a lost queue is republished from them).

Reconciling
-----------
RabbitMQ cannot be asked whether it holds a given id, so the sweep compares counts:
every ``SWEEP_INTERVAL`` a queue's leader (the one worker whose publishing connection
holds its exclusive leader queue, which also publishes its delayed jobs when due:
``_leading``) reads the queue's message count and the
number of READY, due rows. If the rows outnumber the messages while the queue is
empty on two sweeps running, or at once after a rescue or after RabbitMQ came back,
the head of the queue as the database orders it is published again (at most
``HEAD`` ids a queue a sweep; twice the last batch, up to ``SWEEP_MOST``, when the
last sweep published a whole batch and the queue is empty again: a lost backlog comes
back as fast as the workers drain it). A duplicate costs a claim that claims nothing
(the database decides), never a second run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F
from django.utils import timezone

try:
    import pika  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImproperlyConfigured(
        "The RabbitMQ broker needs the pika package: pip install pika (from a checkout of "
        "django-tasks-engine: pip install -e '.[rabbitmq]')."
    ) from exc

from ...jobs.messages import ByIds, Message, NewJob, Outcome, Start
from ...states import READY
from ..base import Broker, BrokerOptions, Exchanged, ModelBackend, database_tag
from ..base import epoch_ms as ms
from ..database import _outage_errors
from .connection import (
    AMQP_OUTAGES,
    Link,
    Publisher,
    Topology,
    connect,
    describe,
    safe_url,
)
from .consumer import Consumer, Delivery

__all__ = ["RabbitMQBackend", "RabbitMQBroker"]

logger = logging.getLogger("django_tasks.worker")

#: Seconds before a delivery whose READY row the claim skipped (locked by another
#: transaction) is published again: meanwhile other jobs run.
LOCKED_RETRY = 1.0
#: Seconds a delivery may wait in a busy worker's buffer before it is returned to the
#: queue for another worker.
HOLD = 2.0
#: Ready rows of a queue published again by one sweep, at first.
HEAD = 1000
#: ... and at most: a queue found empty again by the next sweep while rows wait (RabbitMQ
#: lost its messages, and each batch was drained before the next sweep) gets twice the
#: last batch, without waiting for a second look. At HEAD a sweep, every other one, a
#: lost backlog came back at 250 jobs/s: 30,000 jobs took 2 minutes, 1,000,000 would
#: take 67.
SWEEP_MOST = 64 * HEAD
#: Seconds between sweeps (and between publishes of delayed jobs that became due).
SWEEP_INTERVAL = 2.0
#: Seconds between looks for delayed jobs that became due: one range scan of the claim
#: index, the only reading of the job table an idle worker does besides the sweep.
DUE_INTERVAL = 1.0
#: A job whose ``run_after`` is within this of now is published at enqueue; the
#: ``due`` duty publishes only jobs due later than this after their enqueue.
DUE_SLACK = timedelta(seconds=0.25)
#: Seconds a claim made outside a worker (tests, scripts) waits for deliveries.
SETTLE = 0.2
#: Unacknowledged deliveries per consumer when the worker does not say (PREFETCH).
DEFAULT_PREFETCH = 16


def default_prefix(alias: str, database: str) -> str:
    """``django_tasks.<alias>.<8 hex digits naming the job table's database>``."""
    return f"django_tasks.{alias}.{database_tag(database)}"


@dataclass(frozen=True)
class RabbitMQOptions(BrokerOptions):
    #: OPTIONS["URL"]: ``amqp://user:password@host:port/vhost``.
    url: str = ""
    #: OPTIONS["PREFIX"] of every queue name, or :func:`default_prefix`.
    prefix: str = ""
    #: OPTIONS["PREFETCH"]: unacknowledged deliveries per worker; None: sized by the
    #: worker (its slots and buffer).
    prefetch: int | None = None
    #: The backend's QUEUES (empty: any), for status and rescues.
    queues: tuple[str, ...] = ()


class RabbitMQBroker(Broker):
    """Messages in RabbitMQ, job rows in the database; see the module docstring."""

    supports_transactional_publish = False  # the row is; the message follows the commit
    supports_wakeup = True
    outage_errors = (*_outage_errors(), *AMQP_OUTAGES)
    option_names = frozenset({"URL", "PREFIX", "PREFETCH"})
    options: RabbitMQOptions

    @classmethod
    def options_from(cls, backend: ModelBackend) -> RabbitMQOptions:
        options = backend.options
        return RabbitMQOptions(
            alias=backend.alias, url=options.get("URL") or "",
            prefix=options.get("PREFIX") or default_prefix(backend.alias, backend.database),
            prefetch=options.get("PREFETCH"), queues=tuple(backend.queues or ()),
        )

    def __init__(self, store: Any, options: RabbitMQOptions) -> None:
        super().__init__(store, options)
        self.url = options.url
        self.topology = Topology(options.prefix)
        self.capacity = options.prefetch if isinstance(options.prefetch, int) else None
        self._publisher: Publisher | None = None
        self._consumers: dict[tuple[str, ...], Consumer] = {}
        self._retry: dict[str, datetime] = {}  # job id -> when to publish it again
        self._due_marks: dict[str, datetime] = {}  # led queue -> due jobs published up to
        self._empty: set[str] = set()  # queues empty with rows waiting at the last sweep
        self._refill: dict[str, int] = {}  # queue -> next batch, while each is drained
        self._force_sweep = False
        self.link = Link(self.url)  # this process's view: outages logged once
        # Deliveries whose claim committed without waiting for the disk (an idle
        # worker's claim alone): acknowledged once a later round trip's commit waited
        # for it (which writes the WAL up to there too), given back after an outage.
        # The broker thread adds to them; a give-back (the duties thread) also settles.
        self._unsure: list[tuple[Consumer, list[Delivery]]] = []
        self._unsure_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            if not self.url:
                raise ImproperlyConfigured(
                    f"TASKS[{self.alias!r}]['OPTIONS']['URL'] is required by the RabbitMQ "
                    "broker, e.g. 'amqp://guest:guest@127.0.0.1:5672/%2F'."
                )
            self._publisher = Publisher(self.url, self.topology, self.link)
        return self._publisher

    def configure_consumer(self, capacity: int) -> None:
        if self.options.prefetch is None:
            self.capacity = max(1, capacity)

    def _consumer(self, queues: Sequence[str]) -> tuple[Consumer, bool]:
        """The consumer of ``queues`` (a new one if there is none or it broke), and
        whether it is new."""
        key = tuple(queues)
        consumer = self._consumers.get(key)
        if consumer is not None and not consumer.broken:
            return consumer, False
        # One consumer a process (one worker; a test's claims of other queues): another
        # one would take deliveries this one needs. Its unacknowledged ones are requeued.
        for other in self._consumers.values():
            other.close()
        self._consumers.clear()
        try:
            consumer = Consumer(self.url, self.topology, queues,
                                self.capacity or DEFAULT_PREFETCH, link=self.link,
                                on_reconnect=self._reconnected)
        except AMQP_OUTAGES as exc:
            self.link.down(exc, "the worker writes outcomes and claims nothing until it "
                                "is back")
            raise
        self._consumers[key] = consumer
        return consumer, True

    def _reconnected(self) -> None:
        # Producers may have failed to publish meanwhile: the next sweep publishes the
        # head of each queue with fewer messages than ready rows without a second look.
        self._force_sweep = True

    def ping(self) -> None:
        connect(self.url, timeout=3.0).close()

    def unreachable(self, exc: BaseException) -> str:
        if isinstance(exc, AMQP_OUTAGES):
            return f"RabbitMQ at {safe_url(self.url)} is unreachable"
        return super().unreachable(exc)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, job: Any) -> bool:
        """INSERT the row in the caller's transaction; if the job is due, its id is
        published once that commits (a delayed job waits for the ``due`` duty)."""
        if not self.store.insert(job):
            return False
        if job.run_after is None or job.run_after <= timezone.now() + DUE_SLACK:
            entry = (str(job.id), job.queue_name, job.priority, ms(job.run_after))
            transaction.on_commit(partial(self.publisher.send, [entry]),
                                  using=self.store.database)
        return True

    def publish_many(self, jobs: Sequence[NewJob], *,
                     meanwhile: Iterator[None] | None = None) -> set[str] | None:
        """INSERT the rows, one statement per batch, in the caller's transaction; once it
        commits, the ids of the due ones inserted are published together and confirmed
        in one window (:meth:`Publisher.publish`); what is not confirmed stays READY for
        the sweep, as for a single publish."""
        inserted = self.store.insert_many(jobs, meanwhile=meanwhile)
        horizon = timezone.now() + DUE_SLACK
        entries = [(str(j.id), j.queue_name, j.priority, ms(j.run_after)) for j in jobs
                   if j.status == READY and (inserted is None or str(j.id) in inserted)
                   and (j.run_after is None or j.run_after <= horizon)]
        if entries:
            transaction.on_commit(partial(self.publisher.publish, entries),
                                  using=self.store.database)
        return inserted

    def flush(self) -> None:
        """Wait for the confirms of what this thread published (tests, shutdown)."""
        if self._publisher is not None:
            self._publisher.flush()

    def _publish_rows(self, rows: Sequence[tuple[str, str, int, datetime]]) -> list[str]:
        """Publish READY rows ``(id, queue, priority, available_at)``; returns the ids
        not confirmed."""
        return self.publisher.publish([(i, q, p, ms(at)) for i, q, p, at in rows])

    def _publish_due_rows(self, job_ids: Sequence[str], now: datetime | None = None) -> None:
        """Publish those of ``job_ids`` that are READY and due (the rest wait for the
        ``due`` duty)."""
        horizon = (now or timezone.now()) + DUE_SLACK
        rows = [r for r in self.store.ready_rows(job_ids) if r[3] <= horizon]
        if rows:
            self._publish_rows(rows)

    def republish(self, job_ids: Sequence[str]) -> None:
        """Jobs made READY again (an operator's retry, a workflow's next step) are
        published once that commits."""
        if job_ids:
            transaction.on_commit(partial(self._publish_due_rows, list(job_ids)),
                                  using=self.store.database)

    # -- claiming -----------------------------------------------------------------------

    def claim(self, worker_id: str, lease: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[Message]:
        if limit <= 0 or not queues:
            return []
        if now is not None:  # a test's clock: what it makes due is published first
            self.publish_due(queues, now)
        consumer, _ = self._consumer(queues)
        self._publish_retries(now)
        # Outside a worker: every queue's deliveries are let arrive, so the best are taken.
        taken = consumer.take(limit, settle=SETTLE, quiet=SETTLE / 4)
        try:
            done = self.store.claim(worker_id, lease, ByIds([d.job_id for d in taken]), now)
        except BaseException:
            consumer.put_back(taken)
            raise
        return self._settle(consumer, taken, done.claimed, done.unreadable, (), now)

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), queues: Sequence[str] = (),
                 limit: int = 0, now: datetime | None = None) -> Exchanged:
        """Take buffered deliveries, then one store round trip (starts, outcomes, the
        claim of those ids: one SQL statement on PostgreSQL), then the acks."""
        consumer: Consumer | None = None
        taken: list[Delivery] = []
        if limit > 0 and queues:
            try:
                if now is not None:
                    self.publish_due(queues, now)
                consumer, new = self._consumer(queues)
                self._publish_retries(now)
                consumer.release_held(HOLD)
                # A worker's broker thread is woken by deliveries (wake_source): it
                # takes what is here. Without one (drain(), a script), nothing buffered
                # and nothing to write: wait for deliveries on their way, as claim does.
                idle = not (starts or outcomes or consumer.held() or consumer.wakes)
                taken = consumer.take(limit, settle=SETTLE if new or idle else 0.0)
            except AMQP_OUTAGES:
                if not (starts or outcomes):
                    raise
                # RabbitMQ is down, the database may not be: results are written all
                # the same (the outage was logged); claiming waits for RabbitMQ.
        # Nothing to write: the claim alone, which does not wait for the disk (it is on
        # the path from enqueue to start); its deliveries are acknowledged only once a
        # later commit did (ByIds.no_disk_wait, docs/reliability.md).
        alone = not (starts or outcomes)
        try:
            done = self.store.exchange(worker_id, lease=lease, starts=starts,
                                       outcomes=outcomes,
                                       claim=ByIds([d.job_id for d in taken], no_disk_wait=alone),
                                       now=now)
        except BaseException:
            if consumer is not None:
                consumer.put_back(taken)
            self._give_back_unsure()
            raise
        if not alone:
            self._ack_unsure()  # this commit waited for the disk: theirs is there too
        retried = [a.id for a in done.applied if a.status == READY]
        return done._replace(claimed=self._settle(consumer, taken, done.claimed,
                                                  done.unreadable, retried, now,
                                                  ack_later=alone))

    def _take_unsure(self) -> list[tuple[Consumer, list[Delivery]]]:
        with self._unsure_lock:
            unsure, self._unsure = self._unsure, []
        return unsure

    def _ack_unsure(self) -> None:
        for consumer, deliveries in self._take_unsure():
            consumer.ack(deliveries)

    def _give_back_unsure(self) -> None:
        """The round trip failed (the database may have crashed): the claims not known
        to be on disk may be lost, so their messages go back to the queue; claimed
        again where their rows are READY, dropped where they are not."""
        for consumer, deliveries in self._take_unsure():
            consumer.give_back(deliveries)

    def _settle(self, consumer: Consumer | None, taken: Sequence[Delivery],
                claimed: list[Message], unreadable: Sequence[str], retried: Sequence[str],
                now: datetime | None, *, ack_later: bool = False) -> list[Message]:
        """The claim is committed: acknowledge every delivery taken (``ack_later``: once
        a later commit waited for the disk). Those whose row is still READY and due
        (skipped: locked by another transaction) are published again after
        ``LOCKED_RETRY``; retries due now are published at once."""
        if consumer is not None and taken:
            if ack_later:
                with self._unsure_lock:
                    self._unsure.append((consumer, list(taken)))
            else:
                consumer.ack(taken)
        got = {m.id for m in claimed}.union(unreadable)
        missed = [d.job_id for d in taken if d.job_id not in got]
        if missed:
            horizon = (now or timezone.now()) + DUE_SLACK
            at = (now or timezone.now()) + timedelta(seconds=LOCKED_RETRY)
            for job_id, _, _, due in self.store.ready_rows(missed):
                if due <= horizon:
                    self._retry[job_id] = at
        if retried:
            self._publish_due_rows(retried, now)
        return claimed

    def _publish_retries(self, now: datetime | None) -> None:
        """Publish again the skipped deliveries whose ``LOCKED_RETRY`` is over."""
        if not self._retry:
            return
        now = now or timezone.now()
        due = [i for i, at in self._retry.items() if at <= now]
        if due:
            for job_id in due:
                del self._retry[job_id]
            self._publish_due_rows(due, now)

    def give_back(self, messages: Sequence[Message]) -> int:
        """The rows go back to READY, untouched; their ids are published again (their
        deliveries were acknowledged when they were claimed)."""
        released = self.store.give_back(messages)
        self._ack_unsure()  # that commit waited for the disk
        self._publish_due_rows([m.id for m in messages])
        return released

    # -- recovery, delays and reconciliation ---------------------------------------------

    def recover(self, worker_id: str) -> None:
        """A lost worker's rows were rescued (RabbitMQ requeued its unacknowledged
        deliveries itself, but those it had claimed were acknowledged): publish the
        head of each queue that has fewer messages than ready rows. The rescued rows,
        claimed first, are at the head."""
        self._force_sweep = True
        self.sweep(self._known_queues(ready_only=True))

    def _known_queues(self, *, ready_only: bool = False) -> list[str]:
        """The backend's QUEUES; without them, the queues its (ready) rows name."""
        if self.options.queues:
            return list(self.options.queues)
        from ...models import Job

        rows = Job.objects.using(self.store.database).filter(backend=self.alias)
        if ready_only:
            rows = rows.ready(self.store.now())
        return sorted(set(rows.order_by().values_list("queue_name", flat=True).distinct()))

    def duties(self, queues: Sequence[str]) -> list[tuple[str, float, Callable[..., None]]]:
        return [("rabbitmq due", DUE_INTERVAL, partial(self.publish_due, queues)),
                ("rabbitmq sweep", SWEEP_INTERVAL, partial(self.sweep, queues))]

    def publish_due(self, queues: Sequence[str], now: datetime | None = None) -> int:
        """Publish the delayed jobs (``run_after``, a retry's backoff) that became due
        since the last call, of those of ``queues`` this worker leads (one worker a queue:
        :meth:`_leading`); on taking the lead of a queue, all its due ones, so those due
        while no worker ran are not left to the sweep. Returns how many."""
        from ...models import Job

        now = now or self.store.now()
        try:
            led = self._leading(queues)
        except AMQP_OUTAGES as exc:  # tried again at the next pass, from the same marks
            self.link.down(exc, "delayed jobs are published once it is back")
            return 0
        published = 0
        for queue in led:
            mark = self._due_marks.get(queue)
            if mark is not None and now <= mark:
                continue
            due = (Job.objects.using(self.store.database)
                   .filter(status=READY, backend=self.alias, queue_name=queue,
                           available_at__lte=now)
                   # Jobs due at enqueue were published then (DUE_SLACK: the row's clock).
                   .filter(available_at__gt=F("enqueued_at") + DUE_SLACK))
            if mark is not None:
                due = due.filter(available_at__gt=mark)
            rows = [(str(i), q, p, a) for i, q, p, a in due.order_by("available_at")
                    .values_list("id", "queue_name", "priority", "available_at")[:HEAD * 10]]
            if rows and self._publish_rows(rows):
                continue  # not confirmed: tried again from the same mark
            # A test's clock may be ahead: the mark never passes the real one, or jobs due
            # before it would wait for the sweep.
            self._due_marks[queue] = (rows[-1][3] if len(rows) == HEAD * 10
                                      else min(now, timezone.now()))
            published += len(rows)
        return published

    def _leading(self, queues: Sequence[str]) -> list[str]:
        """Those of ``queues`` whose delayed jobs and sweep are this worker's: one worker
        a queue, the holder of its leader queue (``Publisher.leads``), so that N workers
        do not publish each due job N times (nor each sweep's batch). A queue whose lead
        was lost is forgotten: if it comes back, its first pass is a new one."""
        led = self.publisher.leads(queues) if queues else set()
        for state in (self._due_marks, self._refill):
            for queue in [q for q in state if q not in led]:
                del state[queue]
        self._empty.intersection_update(led)
        return [q for q in queues if q in led]

    def sweep(self, queues: Sequence[str], now: datetime | None = None) -> int:
        """Publish the ready rows RabbitMQ may have lost (see the module docstring);
        returns how many were published."""
        from ...models import Job

        now = now or self.store.now()
        force, self._force_sweep = self._force_sweep, False
        if not queues:
            return 0
        try:
            # After a reconnect or a rescue, every worker publishes the heads it serves;
            # else the queue's leader alone.
            swept = list(queues) if force else self._leading(queues)
            counts = self.queue_counts(swept)
        except AMQP_OUTAGES as exc:  # the consumer reconnects, and says so once
            self.link.down(exc, "reconciling waits until it is back")
            self._force_sweep = True
            return 0
        self.link.up()
        published = 0
        for queue in swept:
            ready = Job.objects.using(self.store.database).ready(now, [queue]).filter(
                backend=self.alias)
            counted = HEAD * 10
            waiting = ready[:counted].count()
            messages = counts[queue][0]
            refilling = queue in self._refill  # the last sweep published a whole batch
            if messages == 0 and waiting and queue not in self._empty and not (
                    force or refilling):
                self._empty.add(queue)  # publishes may be in flight: look again next time
                continue
            self._empty.discard(queue)
            missing = waiting - messages
            if missing <= 0:  # RabbitMQ holds as many as wait: nothing to refill
                self._refill.pop(queue, None)
                continue
            if not (force or messages == 0):  # a batch still being drained, or in flight
                continue
            batch = self._refill.pop(queue, HEAD)
            if messages == 0 and waiting == counted:  # at least that many: a batch
                missing = batch
            rows = [(str(i), q, p, a) for i, q, p, a in ready.values_list(
                "id", "queue_name", "priority", "available_at")[:min(missing, batch)]]
            self._publish_rows(rows)
            published += len(rows)
            if len(rows) == batch:  # more may wait: once this one is drained, a bigger one
                self._refill[queue] = min(SWEEP_MOST, 2 * batch)
        if published:
            logger.warning("Published %d ready job(s) again that RabbitMQ did not hold "
                           "(a publish lost or a rescue); duplicates are dropped by the "
                           "claim", published)
        return published

    def queue_counts(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (messages ready, consumers)}`` as RabbitMQ has them (declaring the
        queues that do not exist yet), on this thread's publishing connection."""
        return self.publisher.counts(queues)

    def wake_source(self, queues: Sequence[str]) -> Consumer | None:
        if not queues:
            return None
        consumer, _ = self._consumer(queues)
        consumer.wakes = True
        return consumer

    def close(self) -> None:
        """Close this process's consumers and this thread's publishing connection."""
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        if self._publisher is not None:
            self._publisher.close()

    def status(self) -> list[str]:
        """Each queue's messages (ready in RabbitMQ) and consumers, or one line saying
        RabbitMQ is unreachable."""
        head = f"RabbitMQ at {safe_url(self.url)} (prefix {self.topology.prefix}):"
        queues = self._known_queues()
        try:
            counts = self.queue_counts(queues or ["default"])
        except AMQP_OUTAGES as exc:
            return [f"{head} unreachable ({describe(exc)}); jobs are stored, and published "
                    "once it is back"]
        return [head] + [f"  queue {q} ({self.topology.name(q)}): {m} message(s) ready, "
                         f"{c} consumer(s)" for q, (m, c) in counts.items()]

    def check(self) -> list[checks.CheckMessage]:
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        errors: list[checks.CheckMessage] = []
        if not isinstance(self.url, str) or not self.url:
            errors.append(checks.Error(f"{where}['URL'] is required by the RabbitMQ broker.",
                                       hint="e.g. 'amqp://guest:guest@127.0.0.1:5672/%2F'",
                                       id="django_tasks.E007"))
        elif not self.url.startswith(("amqp://", "amqps://")):
            scheme = self.url.split(":", 1)[0]
            hint = ("Celery's pyamqp:// URL is amqp:// here: the same host, credentials "
                    "and vhost." if scheme in {"pyamqp", "librabbitmq"} else None)
            errors.append(checks.Error(f"{where}['URL'] must be an amqp:// or amqps:// URL, "
                                       f"not {safe_url(self.url)!r}.", hint=hint,
                                       id="django_tasks.E007"))
        prefetch = self.options.prefetch
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int)
                                     or not 1 <= prefetch <= 65535):
            errors.append(checks.Error(f"{where}['PREFETCH'] must be an integer from 1 to "
                                       f"65535 (unacknowledged deliveries per worker), not "
                                       f"{prefetch!r}.", id="django_tasks.E007"))
        prefix = self.topology.prefix
        if not isinstance(prefix, str) or len(prefix) > 200:
            errors.append(checks.Error(f"{where}['PREFIX'] must be a string of at most 200 "
                                       "characters (queue names are at most 255 bytes).",
                                       id="django_tasks.E007"))
        return errors


class RabbitMQBackend(ModelBackend):
    """Jobs and results in your database; RabbitMQ carries the queue.

    ``TASKS = {"default": {"BACKEND": "django_tasks.backends.rabbitmq.RabbitMQBackend",
    "OPTIONS": {"URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}}}``
    """

    broker_class = RabbitMQBroker
