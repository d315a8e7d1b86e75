"""The broker thread: every round trip of the hot path, and riding out broker outages.

Each round trip (:meth:`BrokerThread.exchange`) writes the starts and outcomes the main
thread gathered in the :class:`~django_tasks.worker.ledger.Ledger` since the last one
and claims jobs for the room left (one statement on PostgreSQL); while it is in flight
the next batch gathers. Between round trips the thread sleeps until the main thread
has something to write, the broker's wake-up channel says jobs were published, or the
poll timer runs out.

Only the broker's ``outage_errors`` are retried (outcomes stay in memory until they
are written); any other exception is a bug: it is logged with its traceback and stops
the worker, whose jobs are then given back or rescued.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.utils import timezone

from ..jobs.messages import Message, Outcome
from ..jobs.tally import written_of
from ..outage import Outage
from ..results import as_datetime
from ..states import FAILED
from .ledger import START_RECORD_LAG
from .phase import Phase
from .wakeup import Waiter

if TYPE_CHECKING:  # the worker builds this class: no import at run time
    from .loop import TaskWorker

logger = logging.getLogger("django_tasks.worker")

__all__ = ["ROUND_TRIP_SPACING", "STATISTICS_INTERVAL", "BrokerThread", "reset_connections"]

#: A worker adds the statistics of the outcomes it wrote at most this often (seconds).
STATISTICS_INTERVAL = 1.0
#: While the buffer holds a job for every slot (Ledger.stocked_for), round trips start
#: at least this many seconds apart, and then wait until it runs low or the starts
#: gathered would be written later than START_RECORD_LAG after the oldest of them
#: (``BrokerThread._space_out``), so that each writes and claims more jobs: a round trip
#: costs the database about the same whether it carries 5 outcomes or 30 (measured:
#: ~400 us of the backend's CPU per round trip, ~37 us per job in it). A worker short of
#: jobs, or idle and woken by an enqueue, does not wait.
ROUND_TRIP_SPACING = 0.004


def reset_connections() -> None:
    """Drop the calling thread's database connections; the next use reconnects."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:
            pass  # it is broken already; Django reconnects on next use


class BrokerThread:
    """What the broker thread does for ``worker``; :meth:`run` is the thread's body.

    It owns the broker's wake-up channel (``listener``): opened by ``TaskWorker.start()``
    before the thread starts, reopened here after it broke, closed at shutdown.
    """

    def __init__(self, worker: TaskWorker) -> None:
        self.worker = worker
        self.listener: Any = None
        self.listens = False  # the broker has a wake-up channel to keep open
        self._wake_retry_at = 0.0
        self._count_at = 0.0  # time.monotonic() when the statistics are next added
        self._waiter = Waiter()  # _sleep's
        self._last_trip = 0.0  # time.monotonic() when the last round trip began (run())
        self._trip_time = 0.0  # seconds a round trip takes, moving average (run())

    # -- one round trip ---------------------------------------------------------------------

    def exchange(self, now: datetime | None = None) -> int:
        """One broker round trip: write starts and outcomes, claim for the room left.

        If the round trip fails, the starts and outcomes are kept for the next one and
        the error propagates. Returns how many jobs were claimed.
        """
        worker = self.worker
        ledger = worker.ledger
        if ledger.has_late:
            worker.pacer.repace()
        batch = ledger.take(claiming=worker.phase is Phase.RUNNING)
        try:
            done = worker.broker.exchange(
                batch.holder, lease=uuid.uuid4().hex, starts=batch.starts,
                outcomes=batch.outcomes, queues=worker.queues, limit=batch.want, now=now,
            )
        except BaseException:
            ledger.put_back(batch)
            raise
        jobs = done.claimed
        failed = 0
        if done.applied:
            failed = sum(a.status == FAILED for a in done.applied)
            worker.tally.add(timezone.now(), written_of(done.applied, batch.outcomes))
        hold = None
        if jobs:
            if any(m.expires_at is not None for m in jobs):
                jobs = self._expire(jobs)
            jobs, hold = worker.pacer.pace(jobs)
        # --burst means "until no READY job is left": the rows decide, not the broker
        # (a message may be on its way, or lost and not republished yet).
        ready_left = (worker.burst and batch.want > 0 and not jobs and not batch.held
                      and not batch.outcomes and worker.store.has_ready(worker.queues, now))
        drained = ledger.add_claimed(batch, jobs, hold, ready_left=ready_left, failed=failed)
        if ready_left:
            self._sleep()  # until a delivery, a reconcile's publish or the poll timer
        if (jobs or batch.starts_since is not None or drained
                or (batch.outcomes and worker.done_claiming())):
            # New jobs, or dispatch may have held back starts until this batch's were
            # written, or the main thread waits for the last outcomes to be written to
            # exit (else it would notice at its poll timer: --max-tasks N exited up to a
            # second late). The starts: also those left out of the batch because their
            # jobs finished meanwhile (their outcomes record them): the main thread
            # held back for them just the same, and slept until its poll timer (1 s
            # stalls in busy drains, most with several workers).
            worker.wake_main.poke()
        if done.stale:
            self._log_stale(done.stale)
        self._add_statistics_when_due()
        return len(jobs)

    def _expire(self, jobs: Sequence[Message]) -> Sequence[Message]:
        """Of claimed ``jobs``, those past their expiry time (Celery's ``expires``) are
        asked to cancel (the error ``Expired``) and never reach the buffer: the next round
        trip writes them CANCELLED, as any claimed job asked to cancel. Returns the rest."""
        now = timezone.now()
        expired = [m for m in jobs if m.expires_at is not None
                   and as_datetime(m.expires_at) <= now]
        if not expired:
            return jobs
        self.worker.store.cancel([m.id for m in expired], expired=True)
        self.worker.ledger.drop_claimed(expired)
        for m in expired:
            logger.info("Job %s expired before it started: task=%s queue=%s", m.id,
                        m.task_path, m.queue_name)
        gone = {m.id for m in expired}
        return [m for m in jobs if m.id not in gone]

    def _add_statistics_when_due(self) -> None:
        """:meth:`add_statistics`, if there are counts and ``STATISTICS_INTERVAL`` has
        passed since the last time."""
        if self.worker.tally and time.monotonic() >= self._count_at:
            self.add_statistics()

    def add_statistics(self) -> None:
        """Add what the worker's round trips wrote to the statistics table: at most
        every ``STATISTICS_INTERVAL`` seconds, busy or idle (an idle worker's sleep ends
        by then to add them). Not in the round trip's own statement: counting there cost
        PostgreSQL ~100 us per job (benchmarks/README.md); this way it is one small
        transaction a second. Added at once whenever the worker fell idle, jobs arriving
        one at a time cost a transaction each: a third of the worker's CPU per job
        (docs/performance.md, the eleventh round). A kill -9 loses what was not added
        yet (at most that second's counts). If it fails, the counts wait for the next
        round trip (``JobStore.add_statistics``)."""
        self._count_at = time.monotonic() + STATISTICS_INTERVAL
        try:
            self.worker.store.add_statistics(self.worker.tally)
        except self.worker.broker.outage_errors as exc:
            logger.debug("Statistics not written yet: %s", exc)

    def _log_stale(self, outcomes: Sequence[Outcome]) -> None:
        """Say why each outcome was discarded: its job's row is gone, or held by another."""
        try:
            exist = self.worker.store.existing([o.id for o in outcomes])
        except Exception:  # logging must not cost the round trip that already committed
            exist = {o.id for o in outcomes}
        for outcome in outcomes:
            if outcome.id not in exist:
                logger.warning(
                    "Job %s was deleted while it ran: its outcome %s went nowhere: task=%s",
                    outcome.id, outcome.status, outcome.task_path or "?",
                )
                continue
            logger.warning(
                "Job %s: outcome %s discarded: task=%s: this worker no longer holds the job "
                "under that claim (it was rescued after this worker was presumed dead, or "
                "this is a replay of a write that had already been made); the job's row "
                "keeps its state", outcome.id, outcome.status, outcome.task_path or "?",
            )

    def reconcile(self) -> None:
        """After a failed round trip: free jobs the table says we hold but we don't know.

        A claim whose commit succeeded but whose answer was lost leaves such jobs.
        """
        worker = self.worker
        held = dict(worker.store.held_by(worker.worker_id))
        unknown = sorted(set(held) - worker.ledger.known_ids())
        if unknown:
            released, retried, failed = worker.store.rescue(
                worker.worker_id, f"worker {worker.worker_id} lost track of the job when its "
                "broker connection broke", job_ids=unknown,
            )
            logger.warning("Freed %d job(s) held without this worker knowing: %d given back, "
                           "%d to retry, %d failed", len(unknown), released, retried, failed)

    # -- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """Round trips until the main thread is done; survives broker outages."""
        worker = self.worker
        ledger = worker.ledger
        outage = Outage(logger, "Broker unreachable", "Broker back")
        prepared = False
        try:
            while True:
                pending = ledger.has_writes()
                if worker.phase >= Phase.FLUSHING and not pending:
                    return
                try:
                    if not prepared:
                        worker.broker.prepare_connection()
                        prepared = True
                    if self.listener is None and self.listens:
                        self._reopen_wake_source()
                    if outage.since is not None:
                        self.reconcile()
                    if self._worth_a_round_trip():
                        self._space_out()
                        self.exchange()
                        took = time.monotonic() - self._last_trip
                        self._trip_time = 0.8 * self._trip_time + 0.2 * took
                    outage.recovered("; outcomes written")
                    if not self._worth_a_round_trip():
                        self._sleep()
                except worker.broker.outage_errors as exc:
                    unwritten = ledger.snapshot().unwritten_outcomes
                    if (worker.phase >= Phase.FLUSHING
                            and outage.lasted() > max(10.0, worker.grace or 0.0)):
                        logger.error(
                            "Giving up on the broker at shutdown: %d outcome(s) unwritten; "
                            "those jobs will be rescued and run again", unwritten,
                        )
                        return
                    delay = outage.failed(exc, f"keeping {unwritten} outcome(s) "
                                               "in memory and retrying")
                    self.reset()
                    prepared = False
                    time.sleep(delay)
        except BaseException:
            worker.bug_in("broker")
        finally:
            self._disarm()
            connections.close_all()

    def _space_out(self) -> None:
        """Let the next batch gather while every slot has a next job buffered.

        The round trip waits at least ``ROUND_TRIP_SPACING`` from the start of the last
        one, then until a round trip (as long as they take on average) before the
        buffer is expected to run low (``Ledger.stocked_for``), and at most until the
        starts gathered since the last one would be committed ``START_RECORD_LAG``
        after the oldest of them, as long as round trips take on average (and 1 ms):
        the dispatcher then seldom has to hold a start back for them
        (it does when a round trip takes longer than usual), and the duplicate window of
        docs/reliability.md is unchanged. It goes at once when the buffer is low, or the
        worker is stopping, but for a worker with no job in sight and only starts to
        write (jobs arriving one at a time): that one waits, until the same bound, for
        whatever comes first of an outcome (which records the start too), a new job and
        a wake-up (``Ledger.only_starts``).

        A fixed 4 ms made the round trips of workers sharing the CPU (4 workers on 2
        cores) carry 6 jobs each instead of 16: PostgreSQL's CPU per job, most of it per
        round trip, then doubled with the number of workers. Keeping twice the average
        round trip in hand was tried: on a loaded machine, whose round trips take 5-8 ms,
        it fell back to the 4 ms floor (four workers: 3,100-3,700 round trips per 20,000
        jobs instead of 1,600-2,000, 140-158 us of PostgreSQL CPU per job instead of
        94-113).
        """
        worker = self.worker
        ledger = worker.ledger
        now = time.monotonic()
        soonest = self._last_trip + ROUND_TRIP_SPACING
        latest = self._last_trip + max(ROUND_TRIP_SPACING,
                                       START_RECORD_LAG - self._trip_time - 0.001)
        if worker.phase is Phase.RUNNING and ledger.only_starts() and latest > now:
            # Nothing to claim (no job in sight) and only starts to write: wait for the
            # outcome, which carries the start too, a new job, or the lag's end. A job
            # arriving alone then costs two round trips (claim, outcome), not three.
            # The main thread's wake-up for the starts is spent first; an outcome added
            # before this drain is seen by the second look, one added after pokes again.
            worker.wake_broker.drain()
            if ledger.only_starts():
                self._sleep(until=latest)
            now = time.monotonic()
        while worker.phase is Phase.RUNNING:
            lasts = ledger.stocked_for()
            if lasts <= 0.0:
                break
            # Begun a round trip's time before the buffer runs low, the claim arrives
            # while the slots still have jobs: begun when it ran low, the slots stood
            # idle for each round trip (a worker's busiest drains: 60% of the time).
            until = min(latest, max(soonest, now + lasts - self._trip_time))
            if until - now < 0.0005:
                break
            time.sleep(until - now)
            now = time.monotonic()
        self._last_trip = now

    def _worth_a_round_trip(self) -> bool:
        worker = self.worker
        return worker.ledger.worth_a_round_trip(claiming=worker.phase is Phase.RUNNING,
                                                burst=worker.burst)

    def _sleep(self, until: float | None = None) -> None:
        """Wait for the main thread, a wake-up from the broker or the poll timer (or
        ``until``, a time.monotonic(), if sooner)."""
        worker = self.worker
        waitables: list[Any] = [worker.wake_broker]
        timeout = worker.poll_interval
        if until is not None:
            timeout = min(timeout, max(0.0, until - time.monotonic()))
        if self.listener is not None:
            waitables.append(self.listener)
            # A source that takes jobs itself, only for a slot that would start it at once
            # (not for the buffer: an idle worker elsewhere would wait while it did).
            arm = getattr(self.listener, "arm", None)
            if (arm is not None and worker.phase is Phase.RUNNING
                    and worker.ledger.has_free_slot()):
                arm(worker.ledger.holder)
        elif self.listens:
            timeout = min(timeout, 1.0)  # the wake-up channel is to be reopened soon
        # Counts to add: by STATISTICS_INTERVAL after the last time (not a poll).
        counting = bool(worker.tally) and self._count_at - time.monotonic() < timeout
        if counting:
            timeout = max(0.0, self._count_at - time.monotonic())
        ready = self._waiter.wait(waitables, timeout)
        self._add_statistics_when_due()
        if worker.wake_broker.r in ready:
            worker.wake_broker.drain()
        heard = self.listener is not None and self.listener.fileno() in ready
        if heard:
            self.listener.drain()  # raises when the LISTEN connection was dropped
        # Woken by the broker or the poll timer: worth asking for jobs again.
        if (not ready and not counting) or heard:
            worker.ledger.expect_jobs()

    # -- the wake-up channel --------------------------------------------------------------------

    def open_wake_source(self) -> None:
        """Subscribe to the broker's wake-up channel, if it has one (at start)."""
        worker = self.worker
        try:
            self.listener = worker.broker.wake_source(worker.queues)
        except worker.broker.outage_errors as exc:  # polling still works; say why we are slower
            logger.warning("No wake-up channel (%s); polling every %ss", exc,
                           worker.poll_interval)
        else:
            self.listens = self.listener is not None

    def _reopen_wake_source(self) -> None:
        """Subscribe again after the wake-up channel broke; while that fails, poll.

        Its server may be down while the database is not (the Redis broker): that must
        not keep outcomes from being written, so a failure here is not an outage of the
        round trip. Tried at most once a second.
        """
        now = time.monotonic()
        if now < self._wake_retry_at:
            return
        self._wake_retry_at = now + 1.0
        try:
            self.listener = self.worker.broker.wake_source(self.worker.queues)
        except self.worker.broker.outage_errors as exc:
            logger.debug("No wake-up channel yet (%s); polling", exc)
            return
        # Jobs published while it was down woke nobody: ask once, rather than sleep
        # until the poll timer.
        self.worker.ledger.expect_jobs()

    def _disarm(self) -> None:
        """No more claims: a wake-up channel that takes jobs itself takes no more (what
        it took meanwhile is handed over, for the give-back, or put back)."""
        disarm = getattr(self.listener, "disarm", None)
        if disarm is not None:
            try:
                disarm()
            except Exception as exc:  # Redis unreachable: the pop in flight fails too
                logger.debug("Wake-up channel not disarmed: %s", exc)

    def reset(self) -> None:
        """Drop this thread's connections and the wake-up channel; the next pass
        reconnects (and subscribes again)."""
        reset_connections()
        if self.listener is not None:
            try:
                self.listener.close()
            except Exception:
                pass
            self.listener = None

    def close_wake_source(self) -> None:
        """Unsubscribe (at shutdown, once the thread has returned)."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
