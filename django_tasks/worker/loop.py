"""The worker loop: claim as many jobs as there are free slots, run them, record outcomes.

``Worker.run_once(now)`` is one explicit step, so tests drive the worker without
sleeping; ``Worker.run()`` repeats it, sleeping on the pool and the broker's wake-up
channel in between, until it is told to stop, runs out of work (``burst``) or has
run ``max_tasks`` jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import wait
from typing import Any

from django.db import connections
from django.tasks import task_backends
from django.utils import timezone

from .pool import make_pool

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Abort", "Worker", "default_worker_id"]


class Abort(BaseException):
    """A second stop signal: leave at once without waiting for running jobs."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
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
    ) -> None:
        self.backend = task_backends[backend]
        if not hasattr(self.backend, "claim"):
            raise ValueError(
                f"TASKS[{backend!r}] uses {type(self.backend).__name__}, which has no queue "
                "to work on; the worker needs a django_tasks backend."
            )
        all_queues = sorted(self.backend.queues)
        self.queues = list(queues) if queues else all_queues
        unknown = [q for q in self.queues if all_queues and q not in all_queues]
        if unknown:
            raise ValueError(
                f"Queue(s) {', '.join(unknown)} are not in TASKS[{backend!r}]['QUEUES'] "
                f"({', '.join(all_queues)})."
            )
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = max(1, concurrency)
        self.pool = make_pool(pool, self.concurrency, self.worker_id)
        # Jobs claimed beyond the free slots, held here until a slot frees up: more jobs
        # per claim statement. Given back on shutdown; 0 claims only for free slots.
        self.prefetch = self.concurrency if prefetch is None else max(0, prefetch)
        self._buffer: deque[dict[str, Any]] = deque()
        self._ran_dry = False
        self.burst = burst
        self.max_tasks = max_tasks
        self.poll_interval = poll_interval or self.backend.config.poll_interval
        self.claimed = 0
        self.completed = 0
        self.stopping = False
        self._listener: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    # -- one step ----------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Record finished outcomes, then claim jobs for the free slots and start them.

        Returns how many jobs were claimed. Never blocks on an empty queue.
        """
        self._record_outcomes()
        if self.stopping:
            return 0
        free = self.pool.free_slots()
        while free and self._buffer:
            self.pool.submit(self._buffer.popleft())
            free -= 1
        if free <= 0:
            return 0
        want = free + self.prefetch
        if self.max_tasks is not None:
            want = min(want, self.max_tasks - self.claimed)
        if want <= 0:
            return 0
        jobs = self.backend.claim(self.worker_id, self.queues, want, now or timezone.now())
        self.claimed += len(jobs)
        self._ran_dry = len(jobs) < want
        for job in jobs:
            if free:
                self.pool.submit(job)
                free -= 1
            else:
                self._buffer.append(job)
        return len(jobs)

    def _record_outcomes(self) -> None:
        """Write the outcomes the pool has finished, in one batch."""
        outcomes = self.pool.collect()
        if outcomes:
            self.backend.complete(self.worker_id, outcomes)
            self.completed += len(outcomes)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Register this worker, start the pool and the heartbeat."""
        now = timezone.now()
        self.backend.register_worker(
            id=self.worker_id, hostname=socket.gethostname(), pid=os.getpid(),
            backend=self.backend.alias, queues=self.queues, concurrency=self.concurrency,
            pool=self.pool.name, started_at=now, last_heartbeat_at=now, stopped_at=None,
        )
        self.pool.start()
        try:
            self._listener = self.backend.wake_source()
        except Exception as exc:  # polling still works; say why we are slower
            logger.warning("No wake-up channel (%s); polling every %ss", exc, self.poll_interval)
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._heartbeat.start()
        logger.info(
            "Worker %s ready: backend=%s queues=%s pool=%s concurrency=%d",
            self.worker_id, self.backend.alias, ",".join(self.queues), self.pool.name,
            self.concurrency,
        )

    def _beat(self) -> None:
        interval = self.backend.config.heartbeat_interval
        try:
            while not self._heartbeat_stop.wait(interval):
                try:
                    self.backend.heartbeat(self.worker_id)
                except Exception as exc:
                    logger.warning("Heartbeat failed: %s", exc)
        finally:
            connections.close_all()

    def stop(self) -> None:
        """Ask the loop to stop claiming and finish (safe from a signal handler)."""
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def run(self) -> int:
        """Work until stopped, out of work (burst) or ``max_tasks`` done; returns jobs run."""
        self.start()
        aborted = False
        try:
            while True:
                claimed = self.run_once()
                busy = self.pool.running() + len(self._buffer)
                if self.stopping:
                    if self.pool.running() == 0:
                        break  # the buffer is given back by shutdown()
                elif self._done_claiming():
                    if busy == 0:
                        break
                elif self.burst and claimed == 0 and busy == 0:
                    break
                # Sleep only when there is nothing to do right now: slots full, or the
                # queue gave fewer jobs than we asked for.
                if (busy and self.pool.free_slots() == 0) or self._ran_dry or claimed == 0:
                    self._sleep(self.poll_interval)
        except Abort:
            aborted = True
            logger.warning(
                "Worker %s stopping at once; %d running job(s) stay RUNNING until rescued",
                self.worker_id, self.pool.running(),
            )
        finally:
            self.shutdown(now=aborted)
        return self.completed

    def _done_claiming(self) -> bool:
        return self.max_tasks is not None and self.claimed >= self.max_tasks

    def _sleep(self, timeout: float) -> None:
        waitables = [*self.pool.waitables(), self._wake_r]
        if self._listener is not None and self.pool.free_slots():
            waitables.append(self._listener)
        ready = wait(waitables, timeout)
        if self._listener is not None and self._listener in ready:
            self._listener.drain()
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 64)
            except BlockingIOError:
                pass

    def shutdown(self, *, now: bool = False) -> None:
        """Stop the pool (killing running jobs if ``now``), give back unstarted jobs, sign off."""
        if not now:
            self._record_outcomes()  # finished but not yet recorded: never drop an outcome
        not_started = [job["id"] for job in self._buffer] + self.pool.stop(now=now)
        self._buffer.clear()
        if not_started:
            released = self.backend.release(self.worker_id, not_started)
            logger.info("Gave back %d job(s) claimed but not started", released)
        self._heartbeat_stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            self.backend.unregister_worker(self.worker_id)
        except Exception as exc:
            logger.warning("Could not mark worker %s stopped: %s", self.worker_id, exc)
        logger.info("Worker %s stopped after %d job(s)", self.worker_id, self.completed)
