"""The worker: a pool of slots fed from the broker, with all broker I/O batched.

Three threads share the work. The main thread only moves jobs: it starts claimed jobs
in free slots and collects finished outcomes, so a slot never waits for the database.
The broker thread does every round trip of the hot path: each :meth:`Worker.exchange`
writes the starts and outcomes gathered since the last one and claims jobs for the
capacity left (one statement on PostgreSQL); while it is in flight the next batch
gathers. It survives the broker going away (outcomes stay in memory until written).
The duties thread runs the periodic duties (heartbeat, rescue of dead workers' jobs,
the cancel poll), each a function of the time, on its own connection, so a slow claim
never delays a heartbeat. Only the broker's outage errors are retried; any other exception in either
thread is a bug: it is logged and stops the worker, whose jobs are then rescued.

The worker talks to the backend's :class:`~django_tasks.backends.base.Broker` and
:class:`~django_tasks.jobs.store.JobStore` only, never to a concrete broker.

``Worker.run_once(now)`` does one whole step on the calling thread, so tests drive the
worker without threads or sleeping; ``Worker.run()`` runs both threads until told to
stop, out of work (``burst``) or ``max_tasks`` jobs have been claimed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from multiprocessing.connection import wait
from typing import Any

from django.db import IntegrityError, connections
from django.utils import timezone

from ..backends.base import Broker
from ..beat.scheduler import Scheduler
from ..conf import backend as tasks_backend
from ..exceptions import WorkerIdInUse
from ..jobs.cancel import cancelled_outcome
from ..jobs.messages import Message, Outcome, Start
from ..jobs.policy import task_or_none
from .broker_thread import BrokerThreads, Duty
from .liveness import is_gone, process_key
from .pools import make_pool
from .wakeup import drain, pipe, poke

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Abort", "Worker", "default_worker_id"]

#: Adaptive prefetch holds what the slots are expected to start within this many seconds.
PREFETCH_WINDOW = 0.1
#: ... and at most this many jobs per slot.
PREFETCH_PER_SLOT = 8
#: Starts are recorded by the next round trip. If the oldest unrecorded start is older
#: than this (the broker thread is starved or the database slow), no more jobs start
#: until it is recorded: that bounds which jobs a kill -9 can leave recorded as
#: "claimed, not started" although they ran.
START_RECORD_LAG = 0.02


#: How often a worker holding jobs asks which of them were asked to cancel (at most;
#: never less often than the heartbeat). An idle worker does not ask.
CANCEL_POLL_INTERVAL = 0.5
BEAT_JOIN_TIMEOUT = 10.0  # seconds a stopping worker waits for a scheduler pass

#: How often a worker deletes the rows of workers gone longer than WORKER_RETENTION.
WORKER_PRUNE_INTERVAL = 3600.0


class Abort(BaseException):
    """A second stop signal: leave at once without waiting for running jobs."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker(BrokerThreads):
    """Runs jobs of one backend's queues with a pool of ``concurrency`` slots."""

    def __init__(
        self,
        *,
        backend: str = "default",
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        pool: str = "prefork",
        worker_id: str | None = None,
        burst: bool = False,
        max_tasks: int | None = None,
        poll_interval: float | None = None,
        prefetch: int | None = None,
        grace: float | None = None,
        pool_options: dict[str, Any] | None = None,
        beat: bool = False,
        cancel_grace: float | None = None,
    ) -> None:
        self.backend = tasks_backend(backend)
        broker = getattr(self.backend, "broker", None)
        if not isinstance(broker, Broker):
            raise ValueError(
                f"TASKS[{backend!r}] uses {type(self.backend).__name__}, which has no queue "
                "to work on; the worker needs a django_tasks backend."
            )
        self.broker: Broker = broker
        self.store = self.backend.store
        all_queues = sorted(self.backend.queues)
        self.queues = list(queues) if queues else all_queues
        if not self.queues:
            # Django reads an empty QUEUES as "any queue", but a claim walks the queues
            # it is given: there is no list to walk, so say so rather than claim nothing.
            raise ValueError(
                f"TASKS[{backend!r}]['QUEUES'] is empty (any queue may be used), so this "
                "worker has no queues to serve: name them with -Q (e.g. -Q default,emails) "
                "or list them in QUEUES."
            )
        unknown = [q for q in self.queues if all_queues and q not in all_queues]
        if unknown:
            raise ValueError(
                f"Queue(s) {', '.join(unknown)} are not in TASKS[{backend!r}]['QUEUES'] "
                f"({', '.join(all_queues)})."
            )
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more; got {prefetch}.")
        if grace is not None and grace < 0:
            raise ValueError(f"grace must be 0 or more seconds; got {grace}.")
        if cancel_grace is not None and cancel_grace < 0:
            raise ValueError(f"cancel_grace must be 0 or more seconds; got {cancel_grace}.")
        #: For tasks without a ``cancel_grace`` of their own: seconds a running job asked
        #: to cancel gets before the prefork pool kills it (None: it is never killed).
        self.cancel_grace = cancel_grace
        self.worker_id = worker_id or default_worker_id()
        self._base_id = self.worker_id
        self._incarnation = 1
        self.concurrency = max(1, concurrency)
        self.pool = make_pool(pool, self.concurrency, self.worker_id, **(pool_options or {}))
        # Jobs claimed beyond the free slots wait in the buffer, so a slot that frees up
        # starts its next job at once instead of after a round trip, and each round trip
        # claims several jobs. ``prefetch=N`` holds up to N. The default adapts: as many
        # as the slots are expected to start within PREFETCH_WINDOW, judged by how long
        # recent jobs ran, at most PREFETCH_PER_SLOT per slot -- so short jobs move in
        # large batches, while long jobs are not hoarded by one worker when another is
        # idle (Celery's fixed multiplier does that; its users are told "-O fair").
        self.prefetch = PREFETCH_PER_SLOT * self.concurrency if prefetch is None else prefetch
        self.adaptive_prefetch = prefetch is None
        self._avg_run: float | None = None  # seconds per job in a slot, moving average
        self.burst = burst
        self.max_tasks = max_tasks
        self.grace = grace
        config = self.backend.config
        self.poll_interval = poll_interval or config.poll_interval
        self.heartbeat_interval = config.heartbeat_interval
        self.worker_timeout = config.worker_timeout

        # State shared by the two threads, guarded by _lock.
        self._lock = threading.Lock()
        self._buffer: deque[Message] = deque()  # claimed, not started
        # job id -> (message, time.monotonic() at the start), for jobs in the pool
        self._running: dict[str, tuple[Message, float]] = {}
        self._starts: list[Start] = []  # started since the last exchange
        # time.monotonic() of the oldest start not yet committed: in _starts, and in the
        # round trip in flight
        self._starts_since: float | None = None
        self._inflight_since: float | None = None
        self._outcomes: list[Outcome] = []  # finished since the last exchange
        # Running jobs the cancel poll found asked to cancel, for the main thread (which
        # owns the pool) to tell; and those already told.
        self._to_cancel: set[str] = set()
        self._told: set[str] = set()
        self._dry = False  # the last claim got fewer jobs than asked for
        self._drained = False  # an exchange with nothing held or pending claimed nothing
        self.claimed = 0
        self.completed = 0

        self.stopping = False
        self.shutting_down = False
        self.abort_requested = False  # a second stop signal: leave at once
        self.crashed = False  # a bug stopped a thread of the worker
        self._listener: Any = None
        self._listens = False  # the broker has a wake-up channel to keep open
        self._broker: threading.Thread | None = None
        self._duties_thread: threading.Thread | None = None
        self._broker_stop = False
        self._duties_stop = threading.Event()
        self._alive_at = time.monotonic()  # last successful heartbeat
        self._holding = False  # dispatch paused: heartbeats have failed too long
        self.duties = [
            Duty("heartbeat", self.heartbeat_interval, self._beat),
            Duty("rescue", self.heartbeat_interval, self._rescue),
            Duty("cancel poll", min(CANCEL_POLL_INTERVAL, self.heartbeat_interval),
                 self._poll_cancels),
            *(Duty(name, interval, run) for name, interval, run in self.broker.duties(self.queues)),
        ]
        self.worker_retention = config.worker_retention
        self.duties.append(
            Duty("prune workers", min(WORKER_PRUNE_INTERVAL, self.worker_retention),
                 self._prune_workers)
        )
        # --beat: the scheduler in a thread of its own, so a small deployment runs one
        # process. Not a duty: a long pass (a lock wait, catch_up="all") must not delay
        # heartbeats. Safe beside any number of other schedulers (each tick is enqueued
        # once).
        self.scheduler: Scheduler | None = Scheduler(self.backend.alias) if beat else None
        self._beat_thread: threading.Thread | None = None
        self._wake_r, self._wake_w = pipe()  # wakes the main thread
        self._io_r, self._io_w = pipe()  # wakes the broker thread
        self._pipes: tuple[int, ...] = (self._wake_r, self._wake_w, self._io_r, self._io_w)

    # -- the two halves of a step -------------------------------------------------------

    def dispatch(self, now: datetime | None = None) -> int:
        """Collect finished outcomes from the pool and start buffered jobs in free slots.

        Main thread only (it owns the pool). Returns how many jobs it started.
        """
        outcomes = self.pool.collect()
        clock = time.monotonic()
        if self._to_cancel:  # rare: no lock on the hot path otherwise
            with self._lock:
                to_cancel, self._to_cancel = self._to_cancel, set()
            for job_id in to_cancel:
                self._tell_cancel(job_id)
        with self._lock:
            for outcome in outcomes:
                self._told.discard(outcome.id)
                message, at = self._running.pop(outcome.id, (None, clock))
                if message is not None:
                    outcome.started_at = message.started_at
                    outcome.task_path = message.task_path
                    outcome.linked = message.workflow_id is not None
                self._outcomes.append(outcome)
                took = clock - at
                self._avg_run = took if self._avg_run is None else 0.8 * self._avg_run + 0.2 * took
            jobs: list[Message] = []
            oldest = min((t for t in (self._starts_since, self._inflight_since) if t is not None),
                         default=clock)
            lagging = clock - oldest > START_RECORD_LAG
            free = 0
            if not self.stopping and not self._holding and not lagging:
                free = self.pool.free_slots()
            if free > 0 and self._buffer:
                stamp = (now or timezone.now()).isoformat()
                if self._starts_since is None:
                    self._starts_since = clock
                waiting = []
                while free > 0 and self._buffer:
                    job = self._buffer.popleft()
                    if job.id in self._running:
                        # Claimed again (after a rescue) while the attempt that lost it
                        # still runs here: a job never runs twice at once in one worker.
                        waiting.append(job)
                        continue
                    job.started_at = job.started_at or stamp
                    self._running[job.id] = (job, clock)
                    self._starts.append(Start(job.id, job.lease, stamp))
                    jobs.append(job)
                    free -= 1
                self._buffer.extendleft(reversed(waiting))
        for job in jobs:
            self.pool.submit(job)
        if outcomes or jobs:
            poke(self._io_w)
        return len(jobs)

    def exchange(self, now: datetime | None = None) -> int:
        """One broker round trip: write starts and outcomes, claim for the room left.

        If the round trip fails, the starts and outcomes are kept for the next one and
        the error propagates. Returns how many jobs were claimed.
        """
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            finished = {o.id for o in outcomes}
            # A job that started and finished in between needs no separate start record.
            starts = [s for s in self._starts if s.id not in finished]
            self._starts = []
            self._inflight_since, self._starts_since = self._starts_since, None
            want = self._room()
            held = len(self._buffer) + len(self._running)
            worker_id = self.worker_id
        try:
            done = self.broker.exchange(
                worker_id, lease=uuid.uuid4().hex, starts=starts, outcomes=outcomes,
                queues=self.queues, limit=want, now=now,
            )
        except BaseException:
            with self._lock:
                self._outcomes[:0] = outcomes
                self._starts[:0] = starts
                self._starts_since = min(
                    (t for t in (self._inflight_since, self._starts_since) if t is not None),
                    default=None,
                )
                self._inflight_since = None
            raise
        jobs = done.claimed
        with self._lock:
            self._inflight_since = None
            self._buffer.extend(jobs)
            self.claimed += len(jobs)
            self.completed += len(outcomes)
            self._dry = len(jobs) < want
            self._drained = want > 0 and not jobs and not held and not outcomes
        if jobs or starts or self._drained:
            poke(self._wake_w)  # new jobs, or dispatch may have waited for the starts
        if done.stale:
            self._log_stale(done.stale)
        return len(jobs)

    def _poll_cancels(self, now: datetime | None = None) -> None:
        """Duty: learn which held jobs were asked to cancel. Buffered ones are dropped
        unstarted (a CANCELLED outcome, written by the next round trip with the outcome
        hooks); running ones are handed to the main thread to tell the pool."""
        with self._lock:
            if not (self._buffer or self._running):
                return
            worker_id = self.worker_id
        ids = self.store.cancelling(worker_id)
        if not ids:
            return
        with self._lock:
            dropped = [m for m in self._buffer if m.id in ids]
            if dropped:
                self._buffer = deque(m for m in self._buffer if m.id not in ids)
                self._outcomes.extend(cancelled_outcome(m.id, m.lease, m.task_path,
                                                        linked=m.workflow_id is not None)
                                      for m in dropped)
            running = {i for i in ids if i in self._running and i not in self._told}
            self._to_cancel |= running
        for m in dropped:
            logger.info("Job %s CANCELLED before it started: task=%s queue=%s", m.id,
                        m.task_path, m.queue_name)
        if dropped:
            poke(self._io_w)
        if running:
            poke(self._wake_w)

    def _tell_cancel(self, job_id: str) -> None:
        """Main thread: the running job ``job_id`` was asked to cancel; with a grace (the
        task's ``cancel_grace``, else the worker's) the pool kills it once that is over."""
        with self._lock:
            entry = self._running.get(job_id)
            if entry is None or job_id in self._told:
                return
            self._told.add(job_id)
        task = task_or_none(entry[0].task_path)
        grace = getattr(task, "cancel_grace", None)
        if grace is None:
            grace = self.cancel_grace
        if not self.pool.cancel(job_id, grace):
            return
        if grace is not None and self.pool.name == "prefork":
            logger.warning("Job %s asked to cancel while running: task=%s; killed in %gs "
                           "unless it stops", job_id, entry[0].task_path, grace)
        else:
            logger.warning("Job %s asked to cancel while running: task=%s; it stops when "
                           "it sees context.is_cancelled()", job_id, entry[0].task_path)

    def _log_stale(self, outcomes: Sequence[Outcome]) -> None:
        """Say why each outcome was discarded: its job's row is gone, or held by another."""
        try:
            exist = self.store.existing([o.id for o in outcomes])
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

    def _room(self) -> int:
        """Jobs to claim now (call with the lock held)."""
        if self.stopping:
            return 0
        room = self.concurrency + self.prefetch_now() - len(self._buffer) - len(self._running)
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - self.claimed)
        return max(0, room)

    def prefetch_now(self) -> int:
        """How many jobs to hold beyond the free slots at the moment."""
        if not self.adaptive_prefetch:
            return self.prefetch
        if self._avg_run is None:  # nothing measured yet: one per slot
            return min(self.prefetch, self.concurrency)
        fits = int(self.concurrency * PREFETCH_WINDOW / max(self._avg_run, 1e-6))
        return min(self.prefetch, fits)

    def run_once(self, now: datetime | None = None) -> int:
        """One whole step on this thread: dispatch, exchange, dispatch.

        Returns how many jobs were claimed. Never blocks on an empty queue.
        """
        self.dispatch(now)
        claimed = self.exchange(now)
        self.dispatch(now)
        return claimed

    def drain(self, now: datetime | None = None) -> int:
        """Step until nothing is ready, running, buffered or unwritten; returns jobs done.

        For tests and scripts with the inline pool (``Worker(pool="inline")``), where a
        step runs its jobs to completion; ``now`` pins the clock for due times.
        """
        done = self.completed
        while True:
            self.run_once(now)
            with self._lock:
                idle = self._drained and not (self._buffer or self._running or self._outcomes)
            if idle and not self.pool.running():
                return self.completed - done

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Register, rescue what dead workers left, start the pool and the threads' sources."""
        self.broker.ping()
        self._register()
        self._rescue()
        self._prune_workers()
        if self.scheduler is not None:
            self.scheduler.sync()
        # Fork before any thread starts, and with no open connection to inherit.
        connections.close_all()
        self.pool.start()
        try:
            self._listener = self.broker.wake_source(self.queues)
        except self.broker.outage_errors as exc:  # polling still works; say why we are slower
            logger.warning("No wake-up channel (%s); polling every %ss", exc, self.poll_interval)
        else:
            self._listens = self._listener is not None
        logger.info(
            "Worker %s ready: backend=%s queues=%s pool=%s concurrency=%d prefetch=%s%s",
            self.worker_id, self.backend.alias, ",".join(self.queues), self.pool.name,
            self.concurrency,
            f"adaptive (up to {self.prefetch})" if self.adaptive_prefetch else self.prefetch,
            " beat=on" if self.scheduler is not None else "",
        )

    def stop(self) -> None:
        """Ask the worker to stop claiming and finish (safe from a signal handler)."""
        self.stopping = True
        poke(self._wake_w)
        poke(self._io_w)

    def abort(self) -> None:
        """Ask the worker to stop at once, interrupting running jobs (safe from a signal
        handler: it only sets flags; the main loop acts at its next safe point)."""
        self.abort_requested = True
        self.stop()

    def run(self) -> int:
        """Work until stopped, out of work (burst) or ``max_tasks`` done; returns jobs run."""
        self.start()
        self._broker = threading.Thread(target=self._broker_loop, name="broker", daemon=True)
        self._broker.start()
        self._duties_thread = threading.Thread(target=self._duties_loop, name="duties",
                                               daemon=True)
        self._duties_thread.start()
        if self.scheduler is not None:
            self._beat_thread = threading.Thread(target=self._beat_loop, name="beat",
                                                 daemon=True)
            self._beat_thread.start()
        aborted = False
        grace_ends: float | None = None
        try:
            while True:
                if self.abort_requested:
                    aborted = True
                    logger.warning("Worker %s stopping at once; %d running job(s) are "
                                   "interrupted", self.worker_id, self.pool.running())
                    break
                self.dispatch()
                with self._lock:
                    busy = bool(self._running or self._buffer or self._outcomes)
                    running = len(self._running)
                    drained = self._drained
                if self.crashed and not self.stopping:
                    self.stop()  # the thread that failed logged why
                if self.stopping:
                    if grace_ends is None and self.grace is not None:
                        grace_ends = time.monotonic() + self.grace
                    if not running:
                        break
                    if grace_ends is not None and time.monotonic() >= grace_ends:
                        logger.warning(
                            "Grace period of %gs over; %d job(s) still running are "
                            "interrupted", self.grace, running,
                        )
                        break
                elif not busy and (self._done_claiming() or (self.burst and drained)):
                    break
                self._wait(grace_ends)
        except Abort:  # raised by code that embeds the worker; signals only set flags
            aborted = True
        finally:
            self.shutdown(at_once=aborted)
        return self.completed

    def _done_claiming(self) -> bool:
        return self.max_tasks is not None and self.claimed >= self.max_tasks

    def _wait(self, until: float | None) -> None:
        timeout = self.poll_interval
        deadline = self.pool.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline))
        if until is not None:
            timeout = min(timeout, max(0.0, until - time.monotonic()))
        ready = wait([*self.pool.waitables(), self._wake_r], timeout)
        if self._wake_r in ready:
            drain(self._wake_r)

    def _register(self) -> None:
        try:
            self.store.register_worker(
                id=self.worker_id, hostname=socket.gethostname(), pid=os.getpid(),
                backend=self.backend.alias, queues=self.queues, concurrency=self.concurrency,
                pool=self.pool.name, process_key=process_key(), is_gone=is_gone,
            )
        except IntegrityError:
            # Another worker inserted this id between our look and our insert.
            raise WorkerIdInUse(
                f"Another worker registered as {self.worker_id!r} at the same moment; give "
                "this one another --worker-id (or none: a unique one is generated)."
            ) from None

    def _prune_workers(self, now: datetime | None = None) -> None:
        """Duty: delete the rows of workers gone for longer than ``WORKER_RETENTION``."""
        before = (now or self.store.now()) - timedelta(seconds=self.worker_retention)
        pruned = self.store.prune_workers(before)
        if pruned:
            logger.info("Deleted the rows of %d worker(s) gone for over %s", pruned,
                        timedelta(seconds=self.worker_retention))

    # -- stopping -------------------------------------------------------------------------

    def shutdown(self, *, at_once: bool = False) -> None:
        """Stop the pool, write what is pending, give back and rescue the rest, sign off.

        ``at_once``: kill running jobs at once (a second signal). Otherwise running jobs
        were given until the grace period ended; any still running are killed. Either
        way the interrupted jobs are rescued at once (their attempt ends with
        ``WorkerLost``, under the task's retry policy), and prefetched jobs are given
        back untouched.
        """
        self.stopping = True
        self.shutting_down = True
        self._duties_stop.set()
        # Running jobs have had their grace period (run() waited for it), so stop kills
        # whatever still runs; prefork children that are idle just exit.
        unfinished = self.pool.stop(at_once=at_once, timeout=0)
        self.dispatch()  # outcomes that arrived meanwhile
        if self._broker is not None and self._broker.is_alive():
            self._broker_stop = True  # it writes what is pending, then returns
            poke(self._io_w)
            self._broker.join()
        else:
            try:
                self.exchange()
            except Exception as exc:
                logger.error("Could not write %d outcome(s): %s", len(self._outcomes), exc)
        if self._duties_thread is not None:
            self._duties_thread.join()
        if self._beat_thread is not None:
            # A pass stuck in a lock wait is left to die with the process: its
            # transaction is rolled back, enqueueing nothing (the tick is not lost to
            # the other schedulers).
            self._beat_thread.join(timeout=BEAT_JOIN_TIMEOUT)
            if self._beat_thread.is_alive():
                logger.warning("The scheduler's pass did not finish within %ss; leaving it",
                               BEAT_JOIN_TIMEOUT)
        with self._lock:
            not_started = list(self._buffer)
            self._buffer.clear()
            interrupted = [i for i in unfinished if i in self._running]
            for job_id in interrupted:
                self._running.pop(job_id, None)
        try:
            if not_started:
                released = self.broker.give_back(not_started)
                logger.info("Gave back %d job(s) claimed but not started", released)
            if interrupted:
                why = ("stopped at once by a second signal" if at_once else
                       f"still running when the {self.grace:g}s shutdown grace period ended")
                self._record_start_of(interrupted)
                counts = self.store.rescue(
                    self.worker_id, f"worker {self.worker_id} {why}", job_ids=interrupted
                )
                logger.warning("Interrupted %d job(s): %d to retry, %d failed",
                               len(interrupted), counts.retried, counts.failed)
            self.store.unregister_worker(self.worker_id)
            self.broker.recover(self.worker_id)  # anything it still tracks for us
        except Exception as exc:
            logger.error("Could not sign off worker %s (%s); its jobs will be rescued "
                         "after WORKER_TIMEOUT", self.worker_id, exc)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._close_pipes()
        logger.info("Worker %s stopped after %d job(s)", self.worker_id, self.completed)

    def _close_pipes(self) -> None:
        fds, self._pipes = self._pipes, ()
        for fd in fds:
            os.close(fd)

    def __del__(self) -> None:
        # A worker stepped by hand (run_once/drain in tests) is often never shut down:
        # don't leak its four pipe descriptors.
        if getattr(self, "_pipes", ()):
            self._close_pipes()

    def _record_start_of(self, job_ids: list[str]) -> None:
        """Make sure interrupted jobs are RUNNING (attempt counted) before rescuing them."""
        with self._lock:
            starts = [s for s in self._starts if s.id in job_ids]
            self._starts = [s for s in self._starts if s.id not in job_ids]
        if starts:
            self.store.record_starts(self.worker_id, starts)
