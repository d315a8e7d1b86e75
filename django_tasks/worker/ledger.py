"""What a worker holds, shared by its main and broker threads under one lock.

A job moves through the ledger as: claimed (a round trip puts it in the *buffer*) ->
started (dispatch moves it to *running* in a free slot and records an unwritten
*start*) -> finished (dispatch turns the pool's outcome into an unwritten *outcome*)
-> written (the next round trip takes the starts and outcomes, and puts them back if
it fails). Cancel requests found by the cancel poll drop buffered jobs (a CANCELLED
outcome) and queue running ones for the main thread to tell the pool.

Every method is one transition and takes the lock once; the hot path takes it once per
dispatch and twice per round trip. Nothing here does I/O or waits while holding it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.utils import timezone

from ..jobs.cancel import cancelled_outcome
from ..jobs.messages import Message, Outcome, Start
from .ledger_types import Batch, Load, Pace, Snapshot, waited

if TYPE_CHECKING:
    from .pacing import Slot

__all__ = [
    "BUFFER_HOLD", "PREFETCH_PER_SLOT", "PREFETCH_WINDOW", "REPACE_TRIES", "START_RECORD_LAG",
    "Batch", "Ledger", "Load", "Snapshot",
]

#: Adaptive prefetch holds what the slots are expected to start within this many seconds.
PREFETCH_WINDOW = 0.1
#: ... and at most this many jobs per slot. 8 ran dry between round trips, 64 drained
#: 20,000 no-op jobs 15-40% faster; 128 (with round trips begun before the buffer runs
#: low) ~20% faster again (docs/performance.md). The window, not this cap, bounds how
#: long the buffer lasts; BUFFER_HOLD bounds what a wrong guess costs.
PREFETCH_PER_SLOT = 128
#: A buffered job not started within this many seconds of its claim is given back to
#: the queue (:meth:`Ledger.overdue`, the worker's ``give back`` duty), and the worker
#: claims no more than its free slots until a running job finishes: its slots stayed
#: busy far longer than the jobs it had measured led it to expect (short jobs, then
#: long ones), and another worker may be idle.
BUFFER_HOLD = 1.0
#: Starts are recorded by the next round trip. If the oldest unrecorded start is older
#: than this (the broker thread is starved or the database slow), no more jobs start
#: until it is recorded: that bounds which jobs a kill -9 can leave recorded as
#: "claimed, not started" although they ran. It also spaces a busy worker's round trips
#: (BrokerThread._space_out): 20 ms made four workers' round trips carry a third of
#: one worker's, and PostgreSQL's CPU per job 1.5-1.7 times one worker's; 50 ms
#: 1.2-1.25 times, and four workers drained 14-23% more jobs a second
#: (docs/performance.md).
START_RECORD_LAG = 0.05
#: A job held for its rate-limit slot that could not start within the limit's tolerance
#: (``worker.pacing.SPACING``) gets a new slot instead, this many times in a row at
#: most; after that it starts late rather than never (a machine that cannot start
#: anything on time).
REPACE_TRIES = 5
#: The slot of a job that missed its own, until the broker thread reserves it a new one.
_LATE = (math.inf, math.inf)


class Ledger:
    """The jobs one worker holds (buffered, running), the starts and outcomes it has not
    written yet, the cancel requests it has to tell, and its counters.

    ``holder`` is the worker id the jobs are held under: it changes when the worker was
    declared dead and comes back (:meth:`reincarnate`), atomically with forgetting what
    the rescuer took.
    """

    def __init__(self, holder: str, *, concurrency: int, prefetch: int | None = None,
                 max_tasks: int | None = None) -> None:
        self.concurrency = concurrency
        # ``prefetch=None``: adaptive (see :meth:`prefetch_now`), up to this many.
        self.prefetch = PREFETCH_PER_SLOT * concurrency if prefetch is None else prefetch
        self.adaptive_prefetch = prefetch is None
        self.max_tasks = max_tasks
        self._lock = threading.Lock()
        self.holder = holder
        self._buffer: deque[Message] = deque()  # claimed, not started
        # Buffered jobs of rate-limited tasks: their reserved start slot, (start at,
        # start by) in time.monotonic() (worker/pacing.py). Empty unless limits are used.
        self._not_before: dict[str, Slot] = {}
        # Of those, the ones that missed their slot (_LATE), for the broker thread to
        # reserve new ones; and how many times in a row each got a new one.
        self._late: set[str] = set()
        self._repaced: dict[str, int] = {}
        # Of the jobs waiting in the pool (below), those that used a rate-limit slot: if
        # the pool hands one back unstarted, the slot is gone and it needs a new one.
        self._held_paced: set[str] = set()
        # job id -> (message, time.monotonic() at the start), for jobs in the pool
        self._running: dict[str, tuple[Message, float]] = {}
        self._starts: list[Start] = []  # started since the last exchange
        # Jobs handed to the pool that wait there to start (a prefork child's next job,
        # PreforkPool): their starts are recorded when they begin (``began``), so one
        # that never does is not counted as an attempt.
        self._held_starts: dict[str, Start] = {}
        # time.monotonic() of the oldest start not yet committed: in _starts, and in the
        # round trip in flight
        self._starts_since: float | None = None
        self._inflight_since: float | None = None
        self._outcomes: list[Outcome] = []  # finished since the last exchange
        # job id -> seconds it waited from due to started (for the statistics)
        self._waited: dict[str, float | None] = {}
        # Running jobs the cancel poll found asked to cancel, for the main thread (which
        # owns the pool) to tell; and those already told.
        self._to_cancel: set[str] = set()
        self._told: set[str] = set()
        self._dry = False  # the last claim got fewer jobs than asked for
        # Jobs were given back for waiting over BUFFER_HOLD: claim only for free slots
        # until a running job finishes (else the next round trip takes them again).
        self._full = False
        self._drained = False  # an exchange with nothing held or pending claimed nothing
        self._avg_run: float | None = None  # seconds per job in a slot, moving average
        self._pace = Pace()  # how fast the buffer empties (stocked_for)
        self.claimed = 0
        self.completed = 0
        self.failed = 0  #: outcomes written FAILED since the worker was made

    # -- the main thread: dispatch ---------------------------------------------------------

    def collect_and_start(self, outcomes: Sequence[Outcome], *, may_start: bool,
                          free_slots: Callable[[], int], clock: float,
                          now: datetime | None = None,
                          idle_slots: Callable[[], int] | None = None,
                          began: Sequence[str] = (),
                          returned: Sequence[Message] = ()) -> list[Message]:
        """Keep the pool's finished ``outcomes`` for the next round trip, then move
        buffered jobs into the free slots and record their starts.

        Returns the jobs to submit to the pool, in order. None start unless
        ``may_start``, nor while the oldest unrecorded start is older than
        ``START_RECORD_LAG``; ``free_slots()`` is asked only when they may. A job still
        running here (an older attempt) stays buffered: a job never runs twice at once
        in one worker. ``idle_slots()``: how many of the first jobs submitted start at
        once (None: all); the others wait in the pool, and their starts are recorded
        when the pool says they ``began`` (ids), or go back to the front of the buffer
        when it hands them back unstarted (``returned``).
        """
        with self._lock:
            if returned:
                self._take_back(returned)
            if began:
                for job_id in began:
                    if self._held_paced:
                        self._held_paced.discard(job_id)
                    start = self._held_starts.pop(job_id, None)
                    if start is not None:
                        self._starts.append(start)
                if self._starts and self._starts_since is None:
                    self._starts_since = clock
            for outcome in outcomes:
                if self._held_starts:
                    self._held_starts.pop(outcome.id, None)
                    self._held_paced.discard(outcome.id)
                self._told.discard(outcome.id)
                message, at = self._running.pop(outcome.id, (None, clock))
                took = clock - at
                if message is not None:
                    outcome.of(message)
                    # For the statistics: the attempt's time in its slot, and how long
                    # the job waited, from when it was due, to start (at dispatch).
                    outcome.ran = took
                    outcome.waited = self._waited.pop(outcome.id, None)
                self._outcomes.append(outcome)
                self._full = False
                self._avg_run = took if self._avg_run is None else 0.8 * self._avg_run + 0.2 * took
            jobs: list[Message] = []
            oldest = min((t for t in (self._starts_since, self._inflight_since) if t is not None),
                         default=clock)
            lagging = clock - oldest > START_RECORD_LAG
            free = 0
            if may_start and not lagging:
                free = free_slots()
            at_once = free if idle_slots is None or free <= 0 else idle_slots()
            if free > 0 and self._buffer:
                start = now or timezone.now()
                stamp = start.isoformat()
                waiting = []
                while free > 0 and self._buffer:
                    job = self._buffer.popleft()
                    if job.id in self._running:
                        # Claimed again (after a rescue) while the attempt that lost it
                        # still runs here: a job never runs twice at once in one worker.
                        waiting.append(job)
                        continue
                    paced = False
                    if self._not_before and job.id in self._not_before:
                        paced = True
                        at, by = self._not_before[job.id]
                        if at > clock:
                            waiting.append(job)  # its rate-limit slot has not come
                            continue
                        if clock > by and self._repaced.get(job.id, 0) < REPACE_TRIES:
                            # Too late for its slot (the broker thread was slow to record
                            # earlier starts, or this thread stalled): starting it now
                            # could crowd a window with the next slots' starts.
                            self._not_before[job.id] = _LATE
                            self._late.add(job.id)
                            waiting.append(job)
                            continue
                        del self._not_before[job.id]
                        self._repaced.pop(job.id, None)
                    job.started_at = job.started_at or stamp
                    self._running[job.id] = (job, clock)
                    self._waited[job.id] = waited(job.available_at, start)
                    if len(jobs) < at_once:
                        self._starts.append(Start(job.id, job.lease, stamp))
                    else:
                        self._held_starts[job.id] = Start(job.id, job.lease, stamp)
                        if paced:
                            self._held_paced.add(job.id)
                    jobs.append(job)
                    free -= 1
                self._buffer.extendleft(reversed(waiting))
                if jobs and at_once and self._starts_since is None:
                    # Only when one started: a buffer of jobs held for their rate-limit
                    # slot must not make the next starts wait for a round trip.
                    self._starts_since = clock
            self._pace.observe(len(jobs), clock, flowing=may_start and not lagging
                               and len(self._buffer) > len(self._not_before))
        return jobs

    def _take_back(self, jobs: Sequence[Message]) -> None:
        """Jobs the pool held for a slot and hands back unstarted: buffered again, first
        (they came before the buffer's), no longer running, their starts unrecorded, so
        a slot of this worker or the give-back (another worker) takes them; they keep
        the time of their claim. Call with the lock held."""
        for job in jobs:
            self._running.pop(job.id, None)
            self._waited.pop(job.id, None)
            self._told.discard(job.id)
            start = self._held_starts.pop(job.id, None)
            if start is None:
                # Not expected: only jobs that waited in the pool come back, and their
                # starts are held. If its start is recorded, the row is RUNNING: it may
                # start here again, never be given back.
                job.buffered_at = math.inf
            elif job.started_at == start.at:
                job.started_at = None  # stamped by the dispatch that sent it: not started
            if job.id in self._held_paced:
                # Its rate-limit slot passed while it waited in the pool: started now it
                # could crowd a window, so the broker thread reserves it a new one
                # (``Pacer.repace``), as for a job that missed its slot in the buffer.
                self._held_paced.discard(job.id)
                self._not_before[job.id] = _LATE
                self._late.add(job.id)
        self._buffer.extendleft(reversed(jobs))

    @property
    def has_cancels(self) -> bool:
        """Running jobs wait to be told to cancel (read without the lock: a hint)."""
        return bool(self._to_cancel)

    def take_cancels(self) -> set[str]:
        """The running jobs to tell to cancel, emptied."""
        with self._lock:
            to_cancel, self._to_cancel = self._to_cancel, set()
        return to_cancel

    def mark_told(self, job_id: str) -> Message | None:
        """Note that the pool is told to cancel ``job_id``; its message, or None if it is
        not running or was told already."""
        with self._lock:
            entry = self._running.get(job_id)
            if entry is None or job_id in self._told:
                return None
            self._told.add(job_id)
        return entry[0]

    def load(self) -> Load:
        """Jobs running, and whether anything is held or unwritten."""
        with self._lock:
            return Load(len(self._running),
                        bool(self._running or self._buffer or self._outcomes), self._drained)

    def stocked_for(self) -> float:
        """Seconds until the buffer is expected to hold fewer jobs than there are slots,
        judged by how fast it emptied while it never ran dry (until measured: by how
        long recent jobs ran; in the prefork pool that is twice too long for short jobs,
        sent early to a busy child), 0.0 if it does already or nothing was measured yet.
        While it holds one job per slot, a slot that frees starts one at once, so a
        round trip can wait (``BrokerThread._space_out``) without leaving a slot idle.
        Jobs held for their rate-limit slot (``_not_before``) do not count: they cannot
        start now. Read without the lock: a hint."""
        above = len(self._buffer) - len(self._not_before) - self.concurrency + 1
        avg_run = self._avg_run
        if above <= 0 or avg_run is None:
            return 0.0
        per_start = self._pace.per_start
        if per_start is not None:
            return above * per_start
        return above * avg_run / self.concurrency

    def only_starts(self) -> bool:
        """Starts are all there is to write, and the last claim came back short: a round
        trip now would claim nothing new (the broker wakes the worker for new jobs) and
        write what the next outcome could carry. Read without the lock: a hint."""
        return (bool(self._starts) and self._dry and not self._outcomes
                and not self._late and not self._buffer)

    def idle(self) -> bool:
        """The last round trip found nothing and nothing is held or unwritten."""
        with self._lock:
            return self._drained and not (self._buffer or self._running or self._outcomes)

    # -- the broker thread: round trips ----------------------------------------------------

    def has_writes(self) -> bool:
        """Starts or outcomes wait to be written."""
        with self._lock:
            return bool(self._outcomes or self._starts)

    def worth_a_round_trip(self, *, claiming: bool, burst: bool) -> bool:
        """Something to write, or room to fill and reason to think jobs are ready."""
        with self._lock:
            if self._outcomes or self._starts or self._late:
                return True
            if self._room(claiming) <= 0:
                return False
            if not self._dry:
                return True
            # A burst worker with nothing left asks once more rather than wait for the
            # poll timer: an empty answer then means the queue is drained.
            return burst and not (self._buffer or self._running) and not self._drained

    def has_free_slot(self) -> bool:
        """A slot neither running nor promised to a buffered job, and room to claim (the
        worker is claiming): a job claimed now would start at once."""
        with self._lock:
            return (len(self._buffer) + len(self._running) < self.concurrency
                    and self._room(True) > 0)

    def expect_jobs(self) -> None:
        """Woken by the broker or the poll timer: worth asking for jobs again."""
        with self._lock:
            self._dry = False

    def take(self, *, claiming: bool) -> Batch:
        """Take the starts and outcomes to write and the number of jobs to claim.

        A start whose job has finished meanwhile is left out (the outcome records the
        attempt). ``claiming`` False: claim nothing (the worker is stopping).
        """
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            finished = {o.id for o in outcomes}
            # A job that started and finished in between needs no separate start record.
            starts = [s for s in self._starts if s.id not in finished]
            self._starts = []
            self._inflight_since, self._starts_since = self._starts_since, None
            return Batch(self.holder, starts, outcomes, self._room(claiming),
                         len(self._buffer) + len(self._running), self._inflight_since)

    def put_back(self, batch: Batch) -> None:
        """The round trip of ``batch`` failed: its starts and outcomes go first in the
        next one."""
        with self._lock:
            self._outcomes[:0] = batch.outcomes
            self._starts[:0] = batch.starts
            self._starts_since = min(
                (t for t in (self._inflight_since, self._starts_since) if t is not None),
                default=None,
            )
            self._inflight_since = None

    def add_claimed(self, batch: Batch, jobs: Sequence[Message],
                    hold: dict[str, Slot] | None = None, *,
                    ready_left: bool = False,
                    failed: int = 0) -> bool:
        """The round trip of ``batch`` committed and claimed ``jobs``: buffer them;
        those in ``hold`` start at their slot, ``(at, by)`` in ``time.monotonic()``
        (rate limits: worker/pacing.py).

        Returns whether the queue looks drained (asked for jobs, holding and writing
        nothing, and got none, with no READY row left: ``ready_left`` says there is).
        """
        with self._lock:
            self._inflight_since = None
            if hold:
                self._not_before.update(hold)
            clock = time.monotonic()
            for job in jobs:
                job.buffered_at = clock
            self._buffer.extend(jobs)
            self.claimed += len(jobs)
            self.completed += len(batch.outcomes)
            self.failed += failed
            self._dry = len(jobs) < batch.want
            self._drained = (batch.want > 0 and not jobs and not batch.held
                             and not batch.outcomes and not ready_left)
            return self._drained

    def next_start(self) -> float | None:
        """The ``time.monotonic()`` at which the first held job may start, or None."""
        if not self._not_before:  # read without the lock: a hint for the main loop's wait
            return None
        with self._lock:
            return min((at for at, _ in self._not_before.values()), default=None)

    @property
    def has_late(self) -> bool:
        """Held jobs missed their slot and wait for new ones (read without the lock: a
        hint for the main thread, to wake the broker thread)."""
        return bool(self._late)

    def late(self) -> list[Message]:
        """The buffered jobs that missed their rate-limit slot (:meth:`collect_and_start`)."""
        with self._lock:
            if not self._late:
                return []
            return [m for m in self._buffer if m.id in self._late]

    def reslot(self, hold: dict[str, Slot],
               later: Collection[str]) -> tuple[str, list[Message]]:
        """New slots for late jobs (``hold``), or none within the horizon (``later``):
        those leave the buffer, to be given back. Jobs cancelled meanwhile are left
        alone. Returns the holder and the jobs to give back (for :meth:`restore`)."""
        with self._lock:
            for job_id, slot in hold.items():
                if job_id in self._late:
                    self._late.discard(job_id)
                    self._not_before[job_id] = slot
                    self._repaced[job_id] = self._repaced.get(job_id, 0) + 1
            back = self._unbuffer(lambda m: m.id in later and m.id in self._late)
            self.claimed -= len(back)
            return self.holder, back

    def _unbuffer(self, leaves: Callable[[Message], bool]) -> list[Message]:
        """Take the buffered jobs ``leaves`` picks out of the buffer, unstarted: they no
        longer hold a slot. Returns them in buffer order (call with the lock held)."""
        gone = [m for m in self._buffer if leaves(m)]
        if gone:
            ids = {m.id for m in gone}
            self._buffer = deque(m for m in self._buffer if m.id not in ids)
            self._forget_slots(ids)
        return gone

    def _forget_slots(self, ids: Collection[str]) -> None:
        """Jobs that left the buffer unstarted hold no slot (call with the lock held)."""
        for job_id in ids:
            self._not_before.pop(job_id, None)
            self._late.discard(job_id)
            self._repaced.pop(job_id, None)

    def drop_claimed(self, jobs: Sequence[Message]) -> None:
        """Claimed ``jobs`` that are not to run (expired, and asked to cancel): a
        CANCELLED outcome each for the next round trip, as for a cancelled buffered job."""
        with self._lock:
            self.claimed += len(jobs)
            self._unstarted_cancelled(jobs)

    def _unstarted_cancelled(self, jobs: Sequence[Message]) -> None:
        """A CANCELLED outcome for each of ``jobs`` (never started), for the next round
        trip (call with the lock held)."""
        self._outcomes.extend(cancelled_outcome(m.id, m.lease, m.task_path,
                                                linked=m.workflow_id is not None)
                              for m in jobs)

    def known_ids(self) -> set[str]:
        """Ids of the jobs this worker knows it holds: buffered, running or unwritten."""
        with self._lock:
            known = {j.id for j in self._buffer} | set(self._running)
            known |= {o.id for o in self._outcomes}
        return known

    def _room(self, claiming: bool) -> int:
        """Jobs to claim now (call with the lock held)."""
        if not claiming:
            return 0
        room = self.concurrency + self.prefetch_now() - len(self._buffer) - len(self._running)
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - self.claimed)
        return max(0, room)

    def prefetch_now(self) -> int:
        """How many jobs to hold beyond the free slots at the moment.

        Adaptive: as many as the slots are expected to start within PREFETCH_WINDOW,
        judged by how long recent jobs ran, at most ``prefetch``; one per slot until a
        job has been measured.
        """
        if not self.adaptive_prefetch:
            return self.prefetch
        if self._full:
            return 0
        avg_run = self._avg_run
        if avg_run is None:  # nothing measured yet: one per slot
            return min(self.prefetch, self.concurrency)
        fits = int(self.concurrency * PREFETCH_WINDOW / max(avg_run, 1e-6))
        return min(self.prefetch, fits)

    # -- the duties thread -----------------------------------------------------------------

    def overdue(self, hold: float, clock: float) -> tuple[str, list[Message]]:
        """Take out of the buffer the jobs claimed over ``hold`` seconds before ``clock``
        (``time.monotonic()``) and still waiting, but for those held for their
        rate-limit slot, to give back; until a running job finishes, the worker then
        claims only for its free slots. Returns the holder they were claimed under (for
        :meth:`restore`) and the jobs. Adaptive prefetch only: a fixed one holds what
        it was told to (and would claim them again at once)."""
        cutoff = clock - hold
        with self._lock:
            if not self.adaptive_prefetch:
                return self.holder, []
            late = self._unbuffer(
                lambda m: m.buffered_at < cutoff and m.id not in self._not_before)
            if late:
                self.claimed -= len(late)
                self._full = True
            return self.holder, late

    def restore(self, holder: str, messages: Sequence[Message], *, late: bool = False) -> None:
        """Jobs taken by :meth:`overdue` (or :meth:`reslot`, ``late``) could not be given
        back (the broker failed): buffered again, first, unless the worker was declared
        dead meanwhile (the rescuer gave them back, and they are held under another
        holder now). Late ones still need a new slot."""
        with self._lock:
            if holder != self.holder:
                return
            self._buffer.extendleft(reversed(messages))
            self.claimed += len(messages)
            if late:
                for m in messages:
                    self._not_before[m.id] = _LATE
                    self._late.add(m.id)

    def holding_as(self) -> str | None:
        """The id jobs are held under, or None when none is buffered or running."""
        with self._lock:
            return self.holder if (self._buffer or self._running) else None

    def cancel(self, job_ids: Collection[str]) -> tuple[list[Message], set[str]]:
        """Jobs asked to cancel: buffered ones are dropped unstarted, with a CANCELLED
        outcome for the next round trip; running ones not told yet are queued for the
        main thread. Returns (the dropped messages, the running ids queued)."""
        with self._lock:
            dropped = self._unbuffer(lambda m: m.id in job_ids)
            if dropped:
                self._unstarted_cancelled(dropped)
            running = {i for i in job_ids if i in self._running and i not in self._told}
            self._to_cancel |= running
        return dropped, running

    def reincarnate(self, holder: str) -> int:
        """The worker was declared dead: the rescuer gave the buffered jobs back, so
        they are forgotten, and from now on jobs are held as ``holder``. Running jobs
        finish; their outcomes will be discarded. Returns how many were dropped."""
        with self._lock:
            dropped = len(self._buffer)
            self._buffer.clear()
            self._forget_slots(list(self._not_before))
            self.holder = holder
        return dropped

    # -- shutdown ----------------------------------------------------------------------------

    def release(self, unfinished: Collection[str]) -> tuple[list[Message], list[str]]:
        """At shutdown: empty the buffer and forget the running jobs the pool did not
        finish. Returns (the buffered messages, the ids of those interrupted)."""
        with self._lock:
            not_started = list(self._buffer)
            self._buffer.clear()
            self._forget_slots(list(self._not_before))
            self._held_paced.clear()
            interrupted = []
            for job_id in unfinished:
                message, _ = self._running.pop(job_id, (None, 0.0))
                self._waited.pop(job_id, None)
                if message is None:
                    continue
                if self._held_starts.pop(job_id, None) is not None:
                    not_started.append(message)  # waited in the pool, never began
                else:
                    interrupted.append(job_id)
        return not_started, interrupted

    def take_starts_of(self, job_ids: Collection[str]) -> list[Start]:
        """Remove and return the unwritten starts of ``job_ids``."""
        with self._lock:
            starts = [s for s in self._starts if s.id in job_ids]
            self._starts = [s for s in self._starts if s.id not in job_ids]
        return starts

    # -- looking, and setting up for tests ----------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An immutable copy of the ledger, taken under the lock."""
        with self._lock:
            return Snapshot(
                holder=self.holder,
                buffered=tuple(m.id for m in self._buffer),
                running=tuple(self._running),
                unrecorded_starts=len(self._starts),
                unwritten_outcomes=len(self._outcomes),
                to_cancel=frozenset(self._to_cancel),
                told=frozenset(self._told),
                claimed=self.claimed,
                completed=self.completed,
                dry=self._dry,
                drained=self._drained,
                avg_run=self._avg_run,
            )

    def add_running(self, message: Message, *, since: float = 0.0) -> None:
        """Count ``message`` as running in a slot since ``since`` (``time.monotonic()``),
        with no start to record: what a test uses to stand for an attempt that still
        runs here (dispatch adds the jobs it starts itself)."""
        with self._lock:
            self._running[message.id] = (message, since)

    def remove_running(self, job_id: str) -> None:
        """Forget a running job without an outcome (the counterpart of :meth:`add_running`)."""
        with self._lock:
            self._running.pop(job_id, None)
            self._waited.pop(job_id, None)

    def set_average_run(self, seconds: float | None) -> None:
        """Set the measured seconds per job that adaptive prefetch goes by (dispatch
        updates it from every outcome; tests set it)."""
        with self._lock:
            self._avg_run = seconds
            self._pace = Pace()

