"""The worker: a pool of slots fed from the broker, with all broker I/O batched.

Three threads share the work. The main thread (this module) only moves jobs: it starts
claimed jobs in free slots and collects finished outcomes, so a slot never waits for
the database. The broker thread (:mod:`.broker_thread`) does every round trip of the
hot path: each one writes the starts and outcomes gathered since the last one and
claims jobs for the capacity left; while it is in flight the next batch gathers. The
duties thread (:mod:`.duties`) runs the periodic duties (heartbeat, rescue of dead
workers' jobs, the cancel poll), each a function of the worker and the time, on its
own connection, so a slow claim never delays a heartbeat. What the main and broker
threads share is the :class:`~.ledger.Ledger`, under its one lock; where the worker is
in its life is one :class:`~.phase.Phase`.

The worker talks to the backend's :class:`~django_tasks.backends.base.Broker` and
:class:`~django_tasks.jobs.store.JobStore` only, never to a concrete broker.

``TaskWorker.run_once(now)`` does one whole step on the calling thread, so tests drive
the worker without threads or sleeping; ``TaskWorker.run()`` runs the threads until
told to stop, out of work (``burst``) or ``max_tasks`` jobs have been claimed.
``snapshot()`` and ``run_duty(name)`` let tests look and act between steps.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connections

from ..backends.base import Broker
from ..beat.scheduler import Scheduler
from ..conf import backend as tasks_backend
from ..exceptions import WorkerIdInUse
from ..jobs.policy import task_or_none
from ..jobs.tally import Tally
from .broker_thread import BrokerThread
from .duties import Duty, Liveness, counters, duties_of, prune_workers, rescue, run_duties
from .ledger import Ledger, Snapshot
from .liveness import is_gone, process_key
from .pacing import Pacer
from .phase import Phase
from .pools import make_pool
from .wakeup import Pipe, Waiter

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Abort", "Phase", "TaskWorker", "default_worker_id"]

BEAT_JOIN_TIMEOUT = 10.0  # seconds a stopping worker waits for a scheduler pass


class Abort(BaseException):
    """A second stop signal: leave at once without waiting for running jobs."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class TaskWorker:
    """Runs jobs of one backend's queues with a pool of ``concurrency`` slots.

    (``django_tasks.worker.Worker`` is this class under its former name;
    ``django_tasks.models.Worker`` is a row of the worker registry.)
    """

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
            raise ImproperlyConfigured(
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
            raise ImproperlyConfigured(
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
        #: Jobs asked to cancel with ``terminate=True`` (Celery's ``revoke``): no grace.
        #: Filled by the cancel poll (duties thread), emptied by the main thread.
        self.terminating: set[str] = set()
        #: Rate limits: which claimed jobs start when (worker/pacing.py).
        self.pacer = Pacer(self)
        worker_id = worker_id or default_worker_id()
        self.concurrency = max(1, concurrency)
        self.pool = make_pool(pool, self.concurrency, worker_id, **(pool_options or {}))
        # Jobs claimed beyond the free slots wait in the ledger's buffer, so a slot that
        # frees up starts its next job at once instead of after a round trip, and each
        # round trip claims several jobs. ``prefetch=N`` holds up to N. The default
        # adapts: as many as the slots are expected to start within PREFETCH_WINDOW,
        # judged by how long recent jobs ran, at most PREFETCH_PER_SLOT per slot -- so
        # short jobs move in large batches, while long jobs are not hoarded by one
        # worker when another is idle (Celery's fixed multiplier does that; its users
        # are told "-O fair").
        self.ledger = Ledger(worker_id, concurrency=self.concurrency, prefetch=prefetch,
                             max_tasks=max_tasks)
        #: The statistics of the outcomes this worker's round trips wrote, until the
        #: broker thread adds them to the table (about once a second: BrokerThread).
        self.tally = Tally()
        self.burst = burst
        self.grace = grace
        config = self.backend.config
        self.poll_interval = poll_interval or config.poll_interval
        self.heartbeat_interval = config.heartbeat_interval
        self.worker_timeout = config.worker_timeout
        self.worker_retention = config.worker_retention
        self.stats_retention = config.stats_retention

        self.phase = Phase.RUNNING  # moved by _enter() only
        # Serialises moves made from other threads (a thread's bug stops the worker);
        # re-entrant because a signal handler runs on the main thread, which may be in
        # the middle of a move itself.
        self._phase_lock = threading.RLock()
        self.crashed = False  # a bug stopped a thread of the worker (not a phase: why)
        self.liveness = Liveness(worker_id)
        self.broker_thread = BrokerThread(self)
        self.duties: list[Duty] = duties_of(self)
        # Set on entering SHUTTING_DOWN: the duties and beat threads sleep on it.
        self.stop_duties = threading.Event()
        # --beat: the scheduler in a thread of its own, so a small deployment runs one
        # process. Not a duty: a long pass (a lock wait, catch_up="all") must not delay
        # heartbeats. Safe beside any number of other schedulers (each tick is enqueued
        # once).
        self.scheduler: Scheduler | None = Scheduler(self.backend.alias) if beat else None
        self._threads: dict[str, threading.Thread] = {}
        self.wake_main = Pipe()  # wakes the main thread
        self.wake_broker = Pipe()  # wakes the broker thread
        self._pipes: tuple[Pipe, ...] = (self.wake_main, self.wake_broker)
        self._waiter = Waiter()  # the main thread's wait (_wait)

    # -- what the ledger holds ------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        """The id this worker holds jobs under (a new one after it was declared dead)."""
        return self.ledger.holder

    @property
    def claimed(self) -> int:
        """Jobs claimed so far."""
        return self.ledger.claimed

    @property
    def completed(self) -> int:
        """Outcomes written so far."""
        return self.ledger.completed

    @property
    def prefetch(self) -> int:
        """The most jobs held beyond the free slots."""
        return self.ledger.prefetch

    @property
    def adaptive_prefetch(self) -> bool:
        return self.ledger.adaptive_prefetch

    @property
    def max_tasks(self) -> int | None:
        return self.ledger.max_tasks

    def prefetch_now(self) -> int:
        """How many jobs to hold beyond the free slots at the moment."""
        return self.ledger.prefetch_now()

    def snapshot(self) -> Snapshot:
        """What the worker holds, at one moment (an immutable copy of its ledger)."""
        return self.ledger.snapshot()

    def run_duty(self, name: str, now: datetime | None = None) -> None:
        """Run the periodic duty called ``name`` once, here and now (its schedule is
        left alone); ``now`` as the duties take it (None: the database's clock)."""
        for duty in self.duties:
            if duty.name == name:
                duty.run(now)
                return
        raise ValueError(f"No duty {name!r}; this worker's duties are "
                         f"{', '.join(d.name for d in self.duties)}.")

    # -- the two halves of a step -------------------------------------------------------

    def dispatch(self, now: datetime | None = None) -> int:
        """Collect finished outcomes from the pool and start buffered jobs in free slots.

        Main thread only (it owns the pool). Returns how many jobs it started.
        """
        outcomes = self.pool.collect()
        clock = time.monotonic()
        ledger = self.ledger
        if ledger.has_cancels:  # rare: no lock on the hot path otherwise
            for job_id in ledger.take_cancels():
                self._tell_cancel(job_id)
        jobs = ledger.collect_and_start(
            outcomes, may_start=self.phase is Phase.RUNNING and not self.liveness.holding,
            free_slots=self.pool.free_slots, clock=clock, now=now,
            idle_slots=self.pool.idle_slots, began=self.pool.began(),
            returned=self.pool.taken_back(),
        )
        for job in jobs:
            self.pool.submit(job)
        if outcomes or jobs or ledger.has_late:
            self.wake_broker.poke()
        return len(jobs)

    def exchange(self, now: datetime | None = None) -> int:
        """One broker round trip: write starts and outcomes, claim for the room left.

        Done by the broker thread; see :meth:`.BrokerThread.exchange`. Returns how many
        jobs were claimed.
        """
        return self.broker_thread.exchange(now)

    def _tell_cancel(self, job_id: str) -> None:
        """Main thread: the running job ``job_id`` was asked to cancel; with a grace (the
        task's ``cancel_grace``, else the worker's) the pool kills it once that is over."""
        message = self.ledger.mark_told(job_id)
        if message is None:
            return
        task = task_or_none(message.task_path)
        grace = getattr(task, "cancel_grace", None)
        if grace is None:
            grace = self.cancel_grace
        if job_id in self.terminating:  # revoke(terminate=True)
            self.terminating.discard(job_id)
            grace = 0.0
        if not self.pool.cancel(job_id, grace):
            return
        if grace is not None and self.pool.name == "prefork":
            logger.warning("Job %s asked to cancel while running: task=%s; killed in %gs "
                           "unless it stops", job_id, message.task_path, grace)
        else:
            logger.warning("Job %s asked to cancel while running: task=%s; it stops when "
                           "it sees context.is_cancelled()", job_id, message.task_path)

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

        For tests and scripts with the inline pool (``TaskWorker(pool="inline")``),
        where a step runs its jobs to completion; ``now`` pins the clock for due times.
        """
        done = self.completed
        while True:
            self.run_once(now)
            if self.ledger.idle() and not self.pool.running():
                if self.tally:  # a running worker's sleep would add them within a second
                    self.broker_thread.add_statistics()
                return self.completed - done

    # -- the phases ---------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase`` unless the worker is there or further already (the one
        place the phase changes). Entering SHUTTING_DOWN tells the duties and beat
        threads to return."""
        with self._phase_lock:
            if phase <= self.phase:
                return
            self.phase = phase
        if phase >= Phase.SHUTTING_DOWN:  # shutdown() only: signals ask for no more than ABORTING
            self.stop_duties.set()

    def stop(self) -> None:
        """Ask the worker to stop claiming and finish (safe from a signal handler)."""
        self._enter(Phase.STOPPING)
        self.wake_main.poke()
        self.wake_broker.poke()

    def abort(self) -> None:
        """Ask the worker to stop at once, interrupting running jobs (safe from a signal
        handler: it only moves the phase; the main loop acts at its next safe point)."""
        self._enter(Phase.ABORTING)
        self.stop()

    def bug_in(self, thread: str) -> None:
        """A bug (not an outage) in ``thread``: say so loudly and stop the worker."""
        logger.exception(
            "Bug in the worker's %s thread; stopping the worker (its jobs will be rescued). "
            "Please report this with the traceback", thread,
        )
        self.crashed = True
        self.stop()

    # -- running ------------------------------------------------------------------------

    def register(self) -> None:
        """Add this worker to the registry (``start()`` does, and the heartbeat after the
        worker was declared dead)."""
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

    def start(self) -> None:
        """Register, rescue what dead workers left, start the pool and the threads' sources."""
        self.broker.ping()
        self.register()
        rescue(self)
        prune_workers(self)
        if self.scheduler is not None:
            self.scheduler.sync()
        # Fork before any thread starts, and with no open connection to inherit.
        connections.close_all()
        self.pool.start()
        # The most jobs it may hold at once: a consuming broker sizes its prefetch so.
        self.broker.configure_consumer(self.concurrency + self.ledger.prefetch)
        self.broker_thread.open_wake_source()
        logger.info(
            "Worker %s ready: backend=%s queues=%s pool=%s concurrency=%d prefetch=%s%s",
            self.worker_id, self.backend.alias, ",".join(self.queues), self.pool.name,
            self.concurrency,
            f"adaptive (up to {self.prefetch})" if self.adaptive_prefetch else self.prefetch,
            " beat=on" if self.scheduler is not None else "",
        )

    def run(self) -> int:
        """Work until stopped, out of work (burst) or ``max_tasks`` done; returns jobs run."""
        self.start()
        self._start_thread("broker", self.broker_thread.run)
        self._start_thread("duties", lambda: run_duties(self))
        if self.scheduler is not None:
            self._start_thread("beat", self._beat_loop)
        aborted = False
        grace_ends: float | None = None
        try:
            while True:
                if self.phase is Phase.ABORTING:
                    aborted = True
                    logger.warning("Worker %s stopping at once; %d running job(s) are "
                                   "interrupted", self.worker_id, self.pool.running())
                    break
                self.dispatch()
                running, busy, drained = self.ledger.load()
                if self.crashed and self.phase < Phase.STOPPING:
                    self.stop()  # the thread that failed logged why
                if self.phase >= Phase.STOPPING:
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
                elif not busy and (self.done_claiming() or (self.burst and drained)):
                    break
                self._wait(grace_ends)
        except Abort:  # raised by code that embeds the worker; signals only set the phase
            aborted = True
        finally:
            self.shutdown(at_once=aborted)
        return self.completed

    def _start_thread(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _beat_loop(self) -> None:
        """The beat thread: the scheduler's loop (as ``manage.py beat``, synchronised at
        start already) until the worker stops; it rides out database outages itself."""
        assert self.scheduler is not None
        try:
            self.scheduler.serve(self.stop_duties, sync=False)
        except BaseException:
            self.bug_in("beat")
        finally:
            connections.close_all()

    def done_claiming(self) -> bool:
        """``max_tasks`` jobs have been claimed: the worker exits once they are written."""
        return self.max_tasks is not None and self.claimed >= self.max_tasks

    def _wait(self, until: float | None) -> None:
        timeout = self.poll_interval
        deadline = self.pool.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline))
        if until is not None:
            timeout = min(timeout, max(0.0, until - time.monotonic()))
        held = self.ledger.next_start()  # a rate-limited job's start slot
        if held is not None:
            # At least 2 ms: the timer may wake a hair early, and a slot already due may
            # wait for the broker thread to record earlier starts: no busy loop.
            timeout = min(timeout, max(held - time.monotonic(), 0.002))
        ready = self._waiter.wait([*self.pool.waitables(), self.wake_main], timeout)
        if self.wake_main.r in ready:
            self.wake_main.drain()

    # -- stopping -------------------------------------------------------------------------

    def shutdown(self, *, at_once: bool = False) -> None:
        """Stop the pool, write what is pending, give back and rescue the rest, sign off.

        ``at_once``: kill running jobs at once (a second signal). Otherwise running jobs
        were given until the grace period ended; any still running are killed. Either
        way the interrupted jobs are rescued at once (their attempt ends with
        ``WorkerLost``, under the task's retry policy), and prefetched jobs are given
        back untouched.
        """
        self._enter(Phase.SHUTTING_DOWN)
        # Running jobs have had their grace period (run() waited for it), so stop kills
        # whatever still runs; prefork children that are idle just exit.
        unfinished = self.pool.stop(at_once=at_once, timeout=0)
        self.dispatch()  # outcomes that arrived meanwhile
        self._enter(Phase.FLUSHING)
        broker = self._threads.get("broker")
        if broker is not None and broker.is_alive():
            self.wake_broker.poke()  # it writes what is pending, then returns
            broker.join()
        else:
            try:
                self.exchange()
            except Exception as exc:
                logger.error("Could not write %d outcome(s): %s",
                             self.snapshot().unwritten_outcomes, exc)
        duties = self._threads.get("duties")
        if duties is not None:
            duties.join()
        beat = self._threads.get("beat")
        if beat is not None:
            # A pass stuck in a lock wait is left to die with the process: its
            # transaction is rolled back, enqueueing nothing (the tick is not lost to
            # the other schedulers).
            beat.join(timeout=BEAT_JOIN_TIMEOUT)
            if beat.is_alive():
                logger.warning("The scheduler's pass did not finish within %ss; leaving it",
                               BEAT_JOIN_TIMEOUT)
        not_started, interrupted = self.ledger.release(unfinished)
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
            self.broker_thread.add_statistics()  # what the last round trips wrote
            self.store.unregister_worker(self.worker_id, counters=counters(self))
            self.broker.recover(self.worker_id)  # anything it still tracks for us
        except Exception as exc:
            logger.error("Could not sign off worker %s (%s); its jobs will be rescued "
                         "after WORKER_TIMEOUT", self.worker_id, exc)
        self.broker_thread.close_wake_source()
        self._close_pipes()
        self._enter(Phase.STOPPED)
        logger.info("Worker %s stopped after %d job(s)", self.worker_id, self.completed)

    def _record_start_of(self, job_ids: list[str]) -> None:
        """Make sure interrupted jobs are RUNNING (attempt counted) before rescuing them."""
        starts = self.ledger.take_starts_of(job_ids)
        if starts:
            self.store.record_starts(self.worker_id, starts)

    def _close_pipes(self) -> None:
        pipes, self._pipes = self._pipes, ()
        for p in pipes:
            p.close()

    def __del__(self) -> None:
        # A worker stepped by hand (run_once/drain in tests) is often never shut down:
        # don't leak its four pipe descriptors.
        if getattr(self, "_pipes", ()):
            self._close_pipes()
