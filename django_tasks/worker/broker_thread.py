"""The worker's two I/O threads, as a part of :class:`~django_tasks.worker.loop.Worker`.

- The **broker thread** makes every round trip of the hot path
  (:meth:`Worker.exchange`: starts, outcomes, claims) and rides out broker outages,
  keeping outcomes in memory until they are written.
- The **duties thread** runs the periodic duties (:class:`Duty`: heartbeat, rescue of
  dead workers' jobs; each a function of the time) on its own connection, so a slow
  claim never delays a heartbeat.
- With ``--beat``, the **beat thread** runs the scheduler, on its own connection too,
  so a long scheduler pass delays neither.

Only the broker's ``outage_errors`` are retried; any other exception in either thread
is a bug: it is logged with its traceback and stops the worker, whose jobs are then
given back or rescued.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from multiprocessing.connection import wait
from typing import Any

from django.db import connections

from ..outage import Outage
from .liveness import is_gone
from .wakeup import drain, poke

logger = logging.getLogger("django_tasks.worker")

__all__ = ["BrokerThreads", "Duty"]


class Duty:
    """A periodic duty of the duties thread: ``run(now)`` every ``interval`` seconds.

    First due one interval from now: ``Worker.start()`` registers (a fresh heartbeat)
    and rescues synchronously before the thread starts.
    """

    def __init__(self, name: str, interval: float, run: Any) -> None:
        self.name, self.interval, self.run = name, interval, run
        self.due = time.monotonic() + interval


class BrokerThreads:
    """The broker and duties threads of a worker (state and verbs live on ``Worker``)."""

    # Attributes ``Worker.__init__`` sets; declared for readers and type checkers.
    _lock: Any
    broker: Any
    store: Any
    scheduler: Any

    def _crash(self, thread: str) -> None:
        """A bug (not an outage) in ``thread``: say so loudly and stop the worker."""
        logger.exception(
            "Bug in the worker's %s thread; stopping the worker (its jobs will be rescued). "
            "Please report this with the traceback", thread,
        )
        self.crashed = True
        self.stop()

    # -- the broker thread ----------------------------------------------------------------

    def _broker_loop(self) -> None:
        """Round trips until the main thread is done; survives broker outages."""
        outage = Outage(logger, "Broker unreachable", "Broker back")
        prepared = False
        try:
            while True:
                with self._lock:
                    pending = bool(self._outcomes or self._starts)
                if self._broker_stop and not pending:
                    return
                try:
                    if not prepared:
                        self.broker.prepare_connection()
                        prepared = True
                    if self._listener is None and self._listens:
                        self._reopen_wake_source()
                    if outage.since is not None:
                        self._reconcile()
                    if self._worth_a_round_trip():
                        self.exchange()
                    outage.recovered("; outcomes written")
                    if not self._worth_a_round_trip():
                        self._sleep_broker()
                except self.broker.outage_errors as exc:
                    if self._broker_stop and outage.lasted() > max(10.0, self.grace or 0.0):
                        logger.error(
                            "Giving up on the broker at shutdown: %d outcome(s) unwritten; "
                            "those jobs will be rescued and run again", len(self._outcomes),
                        )
                        return
                    delay = outage.failed(exc, f"keeping {len(self._outcomes)} outcome(s) "
                                               "in memory and retrying")
                    self._reset_connections()
                    prepared = False
                    time.sleep(delay)
        except BaseException:
            self._crash("broker")
        finally:
            connections.close_all()

    def _reopen_wake_source(self) -> None:
        """Subscribe again after the wake-up channel broke; while that fails, poll.

        Its server may be down while the database is not (the Redis broker): that must
        not keep outcomes from being written, so a failure here is not an outage of the
        round trip. Tried at most once a second.
        """
        now = time.monotonic()
        if now < getattr(self, "_wake_retry_at", 0.0):
            return
        self._wake_retry_at = now + 1.0
        try:
            self._listener = self.broker.wake_source(self.queues)
        except self.broker.outage_errors as exc:
            logger.debug("No wake-up channel yet (%s); polling", exc)

    def _worth_a_round_trip(self) -> bool:
        """Something to write, or room to fill and reason to think jobs are ready."""
        with self._lock:
            if self._outcomes or self._starts:
                return True
            if self._room() <= 0:
                return False
            if not self._dry:
                return True
            # A burst worker with nothing left asks once more rather than wait for the
            # poll timer: an empty answer then means the queue is drained.
            return self.burst and not (self._buffer or self._running) and not self._drained

    def _sleep_broker(self) -> None:
        """Wait for the main thread, a wake-up from the broker or the poll timer."""
        waitables = [self._io_r]
        timeout = self.poll_interval
        if self._listener is not None:
            waitables.append(self._listener)
        elif self._listens:
            timeout = min(timeout, 1.0)  # the wake-up channel is to be reopened soon
        ready = wait(waitables, timeout)
        if self._io_r in ready:
            drain(self._io_r)
        if self._listener is not None and self._listener in ready:
            self._listener.drain()  # raises when the LISTEN connection was dropped
        with self._lock:
            # Woken by the broker or the poll timer: worth asking for jobs again.
            if not ready or self._listener in ready:
                self._dry = False

    # -- the duties thread ----------------------------------------------------------------

    def _duties_loop(self) -> None:
        """Run each duty when due, on this thread's own connection, until the worker stops."""
        outage = Outage(logger, "Duties: broker unreachable", "Duties: broker back")
        try:
            while not self._duties_stop.is_set():
                clock = time.monotonic()
                due = [d for d in self.duties if d.due <= clock]
                try:
                    for duty in due:
                        duty.run(None)
                        duty.due = time.monotonic() + duty.interval
                except self.broker.outage_errors as exc:
                    delay = outage.failed(exc)
                    self._reset_connections(listener=False)
                    # Starting a buffered job now could run one a rescuer has given to
                    # another worker after declaring this one dead: pause dispatch.
                    if time.monotonic() - self._alive_at > self.worker_timeout / 2:
                        self._holding = True
                    self._duties_stop.wait(delay)
                    continue
                outage.recovered()
                next_due = min(d.due for d in self.duties)
                self._duties_stop.wait(max(0.0, next_due - time.monotonic()))
        except BaseException:
            self._crash("duties")
        finally:
            connections.close_all()

    # -- the beat thread (worker --beat) ----------------------------------------------------

    def _beat_loop(self) -> None:
        """The scheduler's loop (as ``manage.py beat``, synchronised at start already)
        until the worker stops; it rides out database outages itself."""
        try:
            self.scheduler.serve(self._duties_stop, sync=False)
        except BaseException:
            self._crash("beat")
        finally:
            connections.close_all()

    def _beat(self, now: datetime | None = None) -> None:
        """Duty: tell the registry this worker is alive; learn if it was declared dead."""
        if self.store.heartbeat(self.worker_id):
            self._alive_at = time.monotonic()
            if self._holding:
                self._holding = False
                poke(self._wake_w)
            return
        old = self.worker_id
        with self._lock:
            # The rescuer gave our claimed jobs back and ended our running ones' leases:
            # what we hold is no longer ours. Running jobs finish; their outcomes will
            # be discarded. We come back as a new worker, never as the dead one.
            dropped = len(self._buffer)
            self._buffer.clear()
            self._incarnation += 1
            self.worker_id = f"{self._base_id}~{self._incarnation}"
        logger.error(
            "Worker %s was declared dead (no heartbeat for over %gs); its jobs were rescued. "
            "Dropped %d prefetched job(s); registering again as %s",
            old, self.worker_timeout, dropped, self.worker_id,
        )
        self._register()
        self._alive_at = time.monotonic()
        self._holding = False
        poke(self._wake_w)

    def _rescue(self, now: datetime | None = None) -> None:
        """Duty: declare silent workers dead and rescue what lost workers held."""
        for holder, why, (released, retried, failed) in self.store.rescue_orphans(
            self.worker_id, now, is_gone=is_gone
        ):
            self.broker.recover(holder)
            logger.warning(
                "Rescued the jobs of worker %s (%s): %d given back, %d to retry, %d failed",
                holder, why, released, retried, failed,
            )

    def _reconcile(self) -> None:
        """After a failed round trip: free jobs the table says we hold but we don't know.

        A claim whose commit succeeded but whose answer was lost leaves such jobs.
        """
        held = dict(self.store.held_by(self.worker_id))
        with self._lock:
            known = {j.id for j in self._buffer} | set(self._running)
            known |= {o.id for o in self._outcomes}
        unknown = sorted(set(held) - known)
        if unknown:
            released, retried, failed = self.store.rescue(
                self.worker_id, f"worker {self.worker_id} lost track of the job when its "
                "broker connection broke", job_ids=unknown,
            )
            logger.warning("Freed %d job(s) held without this worker knowing: %d given back, "
                           "%d to retry, %d failed", len(unknown), released, retried, failed)

    def _reset_connections(self, *, listener: bool = True) -> None:
        """Drop this thread's connections; the next pass reconnects (and LISTENs again)."""
        for conn in connections.all(initialized_only=True):
            try:
                conn.close()
            except Exception:
                pass  # it is broken already; Django reconnects on next use
        if listener and self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                pass
            self._listener = None
