"""The prefork pool: one forked child process per slot, supervised.

The supervisor side (``PreforkPool``, here) runs in the worker's main thread; the child
side (:func:`.child.child_main`) is everything a forked child runs. A child that dies, overruns
its ``time_limit`` or reaches its recycling limits is replaced; a dead child's job
gets an outcome built by :func:`~django_tasks.jobs.policy.failure_outcome`, like
any exception. See :mod:`django_tasks.worker.pools` for the interface all pools share.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from django.db import connections
from django.utils import timezone

from ...exceptions import Terminated, TimeLimitExceeded, WorkerLost
from ...jobs.messages import Message, Outcome
from ...jobs.policy import failure_outcome, task_or_none
from ..wakeup import Waiter
from .child import (
    EXIT_GRACE,
    PICKLE,
    RECALLED,
    STARTED,
    child_main,
    describe_exit,
    exited,
    prctl,
)

logger = logging.getLogger("django_tasks.worker")

__all__ = ["PreforkPool"]

#: How long to wait before trying again when forking a replacement child failed.
_RESPAWN_DELAY = 1.0

#: A busy child is sent its next job before it finishes the one it runs (so it goes
#: on without waiting for the supervisor to collect the outcome and answer) only while
#: jobs run shorter than this on average, and only in the first this-many seconds of
#: the job it runs: a queued job waits at most about one short job.
PIPELINE_BELOW = 0.005
#: A queued job whose child's current job has run this long is taken back (unless the
#: child started it meanwhile) and runs in the next free slot instead.
RECALL_AFTER = 0.02

_UNKNOWN = object()

@contextlib.contextmanager
def _fork_warning_filtered() -> Iterator[None]:
    # Python 3.12+ warns that fork() in a multi-threaded process may deadlock the
    # child on a lock another thread held. The supervisor has a heartbeat thread and
    # a broker I/O thread; the child never touches their state (their connections
    # are theirs, ours are closed before the fork), logging and import locks are
    # reset after fork by CPython, and the child only runs execute(). Celery's
    # billiard forks the same way. Only this one warning is filtered, only here.
    # (catch_warnings swaps the process-wide filter list for the moment of the fork;
    # a warning from another thread in that window sees one extra, narrow filter.)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*multi-threaded, use of fork\(\) may lead to deadlocks",
            category=DeprecationWarning,
        )
        yield


@dataclass(slots=True)
class _Slot:
    index: int
    process: Any = None  # None only while a replacement could not be forked
    pipe: Any = None  # the supervisor's end of the pipe to ``process``
    message: Message | None = None  # the job running there
    started: float = 0.0  # time.monotonic() at submit (or when the child went on to it)
    time_limit: float | None = None
    deadline: float | None = None  # time.monotonic() past which the child is killed
    # Set when the job was asked to cancel with a grace: (seconds, its kill time).
    cancel: tuple[float, float] | None = None
    # The job sent behind ``message`` (PIPELINE_BELOW): the child starts it as soon as
    # it has sent the outcome of ``message``, without waiting for the supervisor.
    queued: Message | None = None
    sent: int = 0  # messages sent to this child; the last one's number
    # With the child: [number of the last message it started, number of one recalled],
    # read and written under ``lock`` by both, so that a queued job is either started
    # by the child or taken back by the supervisor, never both.
    shared: Any = None
    lock: Any = None


def _idle(slot: _Slot) -> bool:
    """A child is there and runs nothing."""
    return slot.process is not None and slot.message is None


class PreforkPool:
    """One forked child process per slot; one job at a time per child.

    A child that dies while running a job (``os._exit``, a segfault, the OOM killer)
    becomes an outcome: ``WorkerLost`` naming the exit code or signal, retried under
    the task's policy like any exception, and the slot gets a new child. Tasks'
    ``soft_time_limit`` is raised inside the task (SIGALRM, in the child); past
    ``time_limit`` the child is killed and the job gets ``TimeLimitExceeded``.

    ``max_tasks_per_child`` / ``max_memory_per_child`` (KiB of peak RSS, checked after
    each job) retire a child once reached: it sends its outcome, exits, and is
    replaced. Children are SIGKILLed by the kernel if the supervisor dies (Linux).

    Short jobs are pipelined: while jobs run shorter than :data:`PIPELINE_BELOW` on
    average, a busy child is also sent its next job, which it starts the moment it has
    sent the outcome of the one it runs (one pipe hand-off per job fewer on the critical
    path: ~10% less CPU per no-op job). The pool counts such a job as running. If the
    job ahead turns out long (:data:`RECALL_AFTER`), the queued one is taken back and
    started in the next free slot; one whose child dies or retires before starting it
    is started elsewhere too, never failed.
    """

    name = "prefork"

    def __init__(self, size: int, worker_id: str, *, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None) -> None:
        for option, value in (("max_tasks_per_child", max_tasks_per_child),
                              ("max_memory_per_child", max_memory_per_child)):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{option} must be a whole number >= 1, or None for no "
                                 f"limit; got {value!r}.")
        self.size = max(1, size)
        self.worker_id = worker_id
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._ctx = multiprocessing.get_context("fork")
        self._slots = [_Slot(index) for index in range(self.size)]
        self._done: list[Outcome] = []  # outcomes found by stop(), for collect()
        self._retired: list[Any] = []  # recycled children, reaped once they have exited
        self._respawn_at: float | None = None
        self._stopped = False
        self._waiter = Waiter()  # collect()'s look at the pipes and sentinels
        self._time_limits: dict[str, Any] = {}  # task path -> its time_limit (submit)
        self._waitables: list[Any] | None = None  # waitables(), until a child changes
        # Jobs submitted that no child runs or holds (taken back, or their child died or
        # retired before starting them): started in the next free slots.
        self._pending: deque[Message] = deque()
        # Cancel requests for jobs not started yet: job id -> grace, applied at start.
        self._cancels: dict[str, float | None] = {}
        self._avg_run: float | None = None  # seconds, recent jobs' (PIPELINE_BELOW)
        self._began: list[str] = []  # jobs that waited here and started since began()

    # -- children ------------------------------------------------------------------------

    def start(self) -> None:
        prctl()  # resolve in the parent, so children do no dlopen() work
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        """Fork a child for ``slot``; on failure leave it empty and retry later."""
        # The child must never share a live connection with us: close this thread's
        # (the only ones a forked child could reach). Other threads' connections are
        # unreachable from the child and stay open.
        connections.close_all()
        parent, child = self._ctx.Pipe(duplex=True)
        siblings = [s.pipe for s in self._slots if s.pipe is not None] + [parent]
        shared, lock = self._ctx.RawArray("q", 2), self._ctx.Lock()
        process = self._ctx.Process(
            target=child_main,
            args=(child, self.worker_id, siblings, os.getpid(), self.max_tasks_per_child,
                  self.max_memory_per_child, shared, lock),
            name=f"task-{slot.index}",
            daemon=True,
        )
        try:
            with _fork_warning_filtered():
                process.start()
        except OSError as exc:  # EAGAIN, ENOMEM: keep running with fewer slots for now
            parent.close()
            logger.error("Could not fork a child for slot %d (%s); retrying in %ss",
                         slot.index, exc, _RESPAWN_DELAY)
            self._respawn_at = time.monotonic() + _RESPAWN_DELAY
            return
        finally:
            child.close()
        slot.process, slot.pipe = process, parent
        slot.shared, slot.lock, slot.sent = shared, lock, 0
        self._waitables = None

    def _release(self, slot: _Slot, *, replace: bool) -> None:
        """Close ``slot``'s pipe, reap its (dead or dying) child, and fork a new one.
        A job queued there that the child never started goes to another slot."""
        if slot.queued is not None:
            self._pending.append(slot.queued)
            slot.queued = None
        if slot.pipe is not None:
            slot.pipe.close()
        if slot.process is not None:
            self._retired.append(slot.process)
        slot.process = slot.pipe = None
        self._waitables = None
        self._reap()
        if replace and not self._stopped:
            self._spawn(slot)

    def _reap(self) -> None:
        still = []
        for process in self._retired:
            if process.is_alive():  # also reaps it when it has exited
                still.append(process)
            else:
                process.close()
        self._retired = still

    # -- jobs ----------------------------------------------------------------------------

    def free_slots(self) -> int:
        """Jobs ``submit()`` takes now: idle children (less the jobs waiting for one),
        and busy ones that may be sent their next job (:data:`PIPELINE_BELOW`)."""
        if self._stopped:
            return 0
        now = time.monotonic()
        return self.idle_slots() + sum(1 for s in self._slots if self._may_queue(s, now))

    def idle_slots(self) -> int:
        """Of ``free_slots()``, the jobs that start at once when submitted (in an idle
        child); those submitted after them wait behind a busy child's job, and are
        reported by :meth:`began` when they start."""
        if self._stopped:
            return 0
        return max(0, sum(1 for s in self._slots if _idle(s)) - len(self._pending))

    def began(self) -> list[str]:
        """Ids of jobs that waited in the pool and have started since the last call."""
        began, self._began = self._began, []
        return began

    def taken_back(self) -> list[Message]:
        """The jobs waiting here for a free slot (taken back from a busy child, or whose
        child died or retired before starting them), handed back: none of them began.
        The worker buffers them again, where its give-back reaches them; the pool alone
        (``submit()`` without a worker) starts them in its next free slots instead."""
        if not self._pending:
            return []
        back = list(self._pending)
        self._pending.clear()
        return back

    def _may_queue(self, slot: _Slot, now: float | None) -> bool:
        """May ``slot``'s child be sent a job behind the one it runs? ``now`` None: the
        timing was judged already (by ``free_slots()``, which ``submit()`` follows)."""
        if slot.message is None or slot.queued is not None or slot.cancel is not None:
            return False
        if slot.process is None or now is None:
            return slot.process is not None
        avg = self._avg_run
        return avg is not None and avg < PIPELINE_BELOW and now - slot.started < PIPELINE_BELOW

    def running(self) -> int:
        return self._in_children() + len(self._pending)

    def _in_children(self) -> int:
        return sum((s.message is not None) + (s.queued is not None) for s in self._slots)

    def running_ids(self) -> list[str]:
        ids = [m.id for s in self._slots for m in (s.message, s.queued) if m is not None]
        return ids + [m.id for m in self._pending]

    def submit(self, message: Message) -> None:
        if self._stopped:
            raise RuntimeError("The pool is stopped; it takes no more jobs.")
        if self._pending:  # jobs taken back go first: keep the order jobs came in
            self._pending.append(message)
            self._start_pending()
            return
        slot = next((s for s in self._slots if _idle(s)), None)
        if slot is not None:
            self._send_to_idle(slot, message)
            return
        # Behind the job that started last (the one free_slots() judged young enough).
        slot = max((s for s in self._slots if self._may_queue(s, None)),
                   key=lambda s: s.started, default=None)
        if slot is None:
            raise RuntimeError("No free slot: check free_slots() before submit().")
        try:
            self._send(slot, message)
        except OSError:  # the child died: collect() sees it; the job waits for a slot
            self._pending.append(message)
            return
        slot.queued = message

    def _send(self, slot: _Slot, message: Message) -> None:
        slot.pipe.send_bytes(pickle.dumps(message.to_wire(), PICKLE))
        slot.sent += 1

    def _send_to_idle(self, slot: _Slot, message: Message, *, held: bool = False) -> None:
        try:
            self._send(slot, message)
        except OSError:
            # The child died idle and collect() has not seen it yet. The job has not
            # started, so it gets a fresh child rather than a WorkerLost.
            self._idle_death(slot)
            if slot.process is None:
                raise
            self._send(slot, message)
        self._begin(slot, message, time.monotonic(), held=held)

    def _begin(self, slot: _Slot, message: Message, now: float, *, held: bool = False) -> None:
        """``message`` runs in ``slot`` from ``now`` (sent to an idle child, or the
        child went on to it): its time limit, and a cancel asked before it started.
        ``held``: it waited in the pool (:meth:`began` reports it)."""
        if held:
            self._began.append(message.id)
        time_limit = self._time_limits.get(message.task_path, _UNKNOWN)
        if time_limit is _UNKNOWN:
            # Once per task for the pool's life: resolving checks the allowed modules.
            time_limit = self._time_limits[message.task_path] = getattr(
                task_or_none(message.task_path), "time_limit", None)
        slot.message = message
        slot.started = now
        slot.time_limit = time_limit
        slot.deadline = None if time_limit is None else now + time_limit
        slot.cancel = None
        if self._cancels and message.id in self._cancels:
            self._cancel_slot(slot, self._cancels.pop(message.id), now)

    def _start_pending(self) -> None:
        for slot in self._slots:
            if not self._pending:
                return
            if _idle(slot):
                self._send_to_idle(slot, self._pending.popleft(), held=True)

    def cancel(self, job_id: str, grace: float | None) -> bool:
        """The job ``job_id`` was asked to cancel: kill its child ``grace`` seconds from
        now unless it ends first (the time limit's path: its outcome is made up with
        ``Terminated``). None: leave it to stop by itself. Returns whether it runs here
        (a job queued or waiting for a slot: from when it starts)."""
        slot = next((s for s in self._slots if s.message is not None
                     and s.message.id == job_id), None)
        if slot is None:
            held = any(s.queued is not None and s.queued.id == job_id for s in self._slots)
            if held or any(m.id == job_id for m in self._pending):
                self._cancels[job_id] = grace
                return True
            return False
        self._cancel_slot(slot, grace, time.monotonic())
        return True

    def _cancel_slot(self, slot: _Slot, grace: float | None, now: float) -> None:
        if grace is not None and slot.cancel is None:
            kill_at = now + grace
            slot.cancel = (grace, kill_at)
            slot.deadline = kill_at if slot.deadline is None else min(slot.deadline, kill_at)

    def _recall(self, slot: _Slot) -> None:
        """Take back the job queued in ``slot`` unless its child started it: it goes to
        the next free slot (the child skips it when it reads it)."""
        number = slot.sent  # the queued job is the last one sent
        if not slot.lock.acquire(timeout=1.0):  # a child killed holding it: leave it
            return
        try:
            if slot.shared[STARTED] >= number:
                return  # it runs: the outcome of the job ahead is on its way
            slot.shared[RECALLED] = number
        finally:
            slot.lock.release()
        assert slot.queued is not None
        self._pending.append(slot.queued)
        slot.queued = None

    def _started_queued(self, slot: _Slot) -> bool:
        """Did the (dead) child of ``slot`` start the job queued there?"""
        return slot.shared is not None and slot.shared[STARTED] >= slot.sent

    def _receive(self, slot: _Slot, ready: set[int] | None = None) -> dict[str, Any] | None:
        """The child's complete reply, if one is waiting; None if none (or it died mid-way).
        ``ready``: the descriptors found readable just now, if known (then no second
        look: ``Connection.poll`` builds a selector each time)."""
        try:
            if ready is None:
                if not slot.pipe.poll():
                    return None
            elif slot.pipe.fileno() not in ready:
                return None
            return pickle.loads(slot.pipe.recv_bytes())
        except (EOFError, OSError):
            return None

    def _lost(self, slot: _Slot, exc: BaseException) -> Outcome:
        """Make up the outcome of the job in ``slot``, whose child is gone."""
        message = slot.message
        assert message is not None
        slot.message = slot.deadline = None
        return failure_outcome(
            message, exc, self.worker_id, now=timezone.now(),
            task=task_or_none(message.task_path),
            duration=time.monotonic() - slot.started,
        )

    def _died(self, slot: _Slot) -> Outcome:
        """The child of ``slot`` died running its job: ``WorkerLost``, and a new child
        (a job queued there goes to another slot)."""
        process = slot.process
        outcome = self._lost(slot, WorkerLost(
            f"The process running the job died ({describe_exit(process.pid, process.exitcode)})."
        ))
        self._release(slot, replace=True)
        return outcome

    def _replies(self, slot: _Slot, reply: dict[str, Any], now: float, *,
                 dead: bool) -> tuple[list[Outcome], dict[str, Any]]:
        """The outcomes from ``reply`` on, and the last reply read: the child's job,
        then the job queued behind it, which the child went on to (it runs in ``slot``
        now) unless it retired or died before starting it (it goes to another slot).
        A dead child's pipe holds everything it sent: it is read to the end."""
        outcomes = []
        while True:
            ran = now - slot.started
            self._avg_run = ran if self._avg_run is None else 0.8 * self._avg_run + 0.2 * ran
            outcomes.append(Outcome.from_wire(reply["outcome"]))
            slot.message = slot.deadline = None
            last, queued, slot.queued = reply, slot.queued, None
            if queued is None:
                return outcomes, last
            if last["retire"] or (dead and not self._started_queued(slot)):
                self._pending.append(queued)  # the child never read it: elsewhere
                return outcomes, last
            self._begin(slot, queued, now, held=True)
            if not dead or (reply := self._receive(slot)) is None:
                return outcomes, last

    def _idle_death(self, slot: _Slot) -> None:
        logger.warning("Child %s (%s) died while idle%s", slot.process.name,
                       describe_exit(slot.process.pid, slot.process.exitcode),
                       "" if self._stopped else "; forking a replacement")
        self._release(slot, replace=True)

    def _check(self, slot: _Slot, now: float, ready: set[int] | None = None) -> list[Outcome]:
        """What happened in ``slot`` since last time: an outcome, a death, a deadline.
        ``ready``: the descriptors readable just now (None: look at everything)."""
        process = slot.process
        if process is None:
            return []
        if (ready is not None and slot.pipe.fileno() not in ready
                and process.sentinel not in ready
                and (slot.deadline is None or now < slot.deadline)):
            return []  # no reply, no death, no deadline: nothing happened
        # Liveness first: anything a dead child sent is already in the pipe.
        dead = exited(process, ready)
        if slot.message is None:
            if dead:
                self._idle_death(slot)
            return []
        reply = self._receive(slot, ready)
        killed = False
        if reply is None and not dead and slot.deadline is not None and now >= slot.deadline:
            process.kill()
            process.join(EXIT_GRACE)
            killed = dead = True
            reply = self._receive(slot)  # it may have finished just before the kill
            if reply is None:
                if slot.cancel is not None and slot.cancel[1] <= now:
                    exc: BaseException = Terminated(
                        f"Cancelled while running, and killed after its cancel_grace "
                        f"({slot.cancel[0]:g} s) (pid {process.pid})."
                    )
                else:
                    exc = TimeLimitExceeded(
                        f"The job ran longer than its time_limit ({slot.time_limit:g} s) and "
                        f"was killed (pid {process.pid})."
                    )
                outcome = self._lost(slot, exc)
                self._release(slot, replace=True)
                return [outcome]
        if reply is not None:
            outcomes, last = self._replies(slot, reply, now, dead=dead)
            if slot.message is not None:  # it went on to the job queued behind
                if dead:  # and died running it
                    outcomes.append(self._died(slot))
                return outcomes
            if last["retire"]:
                logger.info("Child %s (pid %s) retires: %s", process.name, process.pid,
                            last["retire"])
                self._release(slot, replace=True)
            elif killed:  # finished just as its time ran out
                self._release(slot, replace=True)
            elif dead:
                self._idle_death(slot)
            elif self._stopped:
                self._release(slot, replace=False)  # EOF tells the child to exit
            return outcomes
        if dead:
            return [self._died(slot)]
        return []

    def _check_all(self, ready: set[int] | None = None) -> list[Outcome]:
        now = time.monotonic()
        done = [outcome for slot in self._slots for outcome in self._check(slot, now, ready)]
        for slot in self._slots:
            if slot.queued is not None and now - slot.started >= RECALL_AFTER:
                self._recall(slot)
        if self._pending and not self._stopped:
            self._start_pending()
        return done

    def collect(self) -> list[Outcome]:
        """Outcomes finished since the last call, real or made up; replaces lost children.

        Never blocks (except briefly to reap a child it just killed for its time limit).
        After ``stop()``, returns the outcomes of jobs that finished during the stop.
        """
        done, self._done = self._done, []
        # One poll of every pipe and sentinel says which slots have news: a slot with
        # none costs no system call (its child's liveness is its sentinel's silence).
        done.extend(self._check_all(self._waiter.wait(self.waitables(), 0)))
        now = time.monotonic()
        if self._respawn_at is not None and now >= self._respawn_at and not self._stopped:
            self._respawn_at = None
            for slot in self._slots:
                if slot.process is None:
                    self._spawn(slot)
        self._reap()
        return done

    def waitables(self) -> list[Any]:
        """Every child's pipe (an outcome arrived; an idle one is readable only when its
        child died) and sentinel (it died): the same list until a child is replaced, so
        it is built once then (``_spawn``, ``_release``), and a poll over it is set up
        once (:class:`~django_tasks.worker.wakeup.Waiter`)."""
        if self._waitables is None:
            ready: list[Any] = [s.pipe for s in self._slots if s.pipe is not None]
            ready.extend(s.process.sentinel for s in self._slots if s.process is not None)
            self._waitables = ready
        return self._waitables

    def next_deadline(self) -> float | None:
        """Seconds until ``collect()`` must run although nothing woke us, or None."""
        due = [s.deadline for s in self._slots if s.message is not None and s.deadline]
        due.extend(s.started + RECALL_AFTER for s in self._slots if s.queued is not None)
        if self._respawn_at is not None and not self._stopped:
            due.append(self._respawn_at)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def stop(self, *, at_once: bool = False, timeout: float | None = None) -> list[str]:
        """Stop taking work and end the children; returns the ids of jobs that did not finish.

        With ``at_once``, running children are killed at once. Otherwise running jobs get up
        to ``timeout`` seconds (None: as long as they take) to finish, with time limits
        and child deaths still handled as in ``collect()``; children still running then
        are killed. Killed jobs get no outcome: their ids are returned and the caller
        decides what becomes of them. Outcomes of jobs that finished (or failed) before
        or during the stop are returned by the next ``collect()`` call.
        """
        if self._stopped:
            return []
        self._stopped = True
        for slot in self._slots:
            if _idle(slot):
                self._release(slot, replace=False)  # EOF: an idle child exits
        end = None if timeout is None else time.monotonic() + timeout
        while not at_once and self._in_children():
            self._done.extend(self._check_all())
            remaining = None if end is None else end - time.monotonic()
            if not self._in_children() or (remaining is not None and remaining <= 0):
                break
            due = self.next_deadline()
            if due is not None:
                remaining = due if remaining is None else min(remaining, due)
            wait(self.waitables(), remaining)
        busy = [s for s in self._slots if s.message is not None]
        for slot in busy:
            slot.process.kill()
        unfinished = []
        for slot in busy:
            slot.process.join(EXIT_GRACE)
            reply = self._receive(slot)  # finished just before the kill: keep it
            if reply is not None:
                self._done.extend(self._replies(slot, reply, time.monotonic(), dead=True)[0])
            if slot.message is not None:
                unfinished.append(slot.message.id)
                logger.warning("Job %s killed by the pool's stop: task=%s",
                               slot.message.id, slot.message.task_path)
            slot.message = slot.deadline = None
            self._release(slot, replace=False)  # a job queued there: to _pending
        unfinished.extend(m.id for m in self._pending)  # never started
        self._pending.clear()
        grace_end = time.monotonic() + EXIT_GRACE
        for process in self._retired:
            process.join(max(0.0, grace_end - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self._reap()
        return unfinished
