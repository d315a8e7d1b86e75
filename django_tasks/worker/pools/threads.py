"""The pools that run jobs inside the worker process: ``threads`` (a slot per thread)
and ``inline`` (the calling thread, for tests and scripts). Neither can enforce a hard
``time_limit`` nor survive a job that kills its process; the prefork pool can.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from django.db import connections

from ...jobs.messages import Message, Outcome
from ...jobs.policy import task_or_none
from ...jobs.side import close_side_connections, keep_side_connections
from ..execute import execute
from ..wakeup import drain, pipe, poke

logger = logging.getLogger("django_tasks.worker")

__all__ = ["InlinePool", "ThreadPool"]


class _LimitWarnings:
    """Warns once per task path that the pool cannot enforce the task's time limits."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.warned: set[str] = set()

    def check(self, path: str) -> None:
        if path in self.warned:
            return
        self.warned.add(path)
        task = task_or_none(path)
        limits = {name: getattr(task, name, None) for name in ("time_limit", "soft_time_limit")}
        if any(v is not None for v in limits.values()):
            logger.warning(
                "Task %s has %s, which the %s pool cannot enforce (a thread can be neither "
                "killed nor interrupted); run it on a worker with --pool prefork.",
                path, ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None),
                self.pool,
            )


class _InProcessPool:
    """What the two pools that run jobs inside the worker process share: their slots,
    their outcomes waiting for ``collect()``, the time-limit warning, and the refusal of
    child recycling (explicit rather than silently ignored: a deploy asking for it with
    ``--pool threads`` would otherwise believe its memory is bounded)."""

    name: str

    def __init__(self, size: int, worker_id: str, *, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None) -> None:
        given = sorted(name for name, value in (("max_tasks_per_child", max_tasks_per_child),
                                                ("max_memory_per_child", max_memory_per_child))
                       if value is not None)
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply to the prefork pool, whose child processes "
                f"can be replaced; the {self.name} pool runs jobs inside the worker process."
            )
        self.size = max(1, size)
        self.worker_id = worker_id
        self._done: list[Outcome] = []
        self._limits = _LimitWarnings(self.name)

    def idle_slots(self) -> int:
        """Every free slot starts its job at once."""
        return self.free_slots()

    def began(self) -> list[str]:
        """No job waits in the pool to start."""
        return []

    def taken_back(self) -> list[Message]:
        """No job waits in the pool to start."""
        return []


class InlinePool(_InProcessPool):
    """Runs each job synchronously in the caller, on the caller's connections (tests, demos).

    Time limits are not enforced (a WARNING is logged once per task that has one);
    ``max_tasks_per_child``/``max_memory_per_child`` are refused with ValueError.
    """

    name = "inline"

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return self.size

    def running(self) -> int:
        return 0

    def running_ids(self) -> list[str]:
        return []

    def submit(self, message: Message) -> None:
        self._limits.check(message.task_path)
        self._done.append(execute(message, self.worker_id, own_connections=False))

    def collect(self) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def cancel(self, job_id: str, grace: float | None) -> bool:
        """Nothing runs between calls: there is nothing to tell."""
        return False

    def waitables(self) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def stop(self, *, at_once: bool = False, timeout: float | None = None) -> list[str]:
        """Nothing runs between calls; outcomes not yet collected stay for ``collect()``."""
        return []


class ThreadPool(_InProcessPool):
    """Jobs run in daemon threads of the worker process; each thread has its own DB connection.

    Python can neither kill nor interrupt a thread, and SIGALRM only reaches the main
    thread, so ``time_limit`` and ``soft_time_limit`` are NOT enforced here (a WARNING
    is logged once per task that has one), and a job that crashes the interpreter
    takes the whole worker with it. Use the prefork pool for such tasks.
    ``max_tasks_per_child``/``max_memory_per_child`` are refused with ValueError.
    """

    name = "threads"

    def __init__(self, size: int, worker_id: str, *, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None) -> None:
        super().__init__(size, worker_id, max_tasks_per_child=max_tasks_per_child,
                         max_memory_per_child=max_memory_per_child)
        self._inbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        # Submitted and not yet collected, in submission order. Touched only by the
        # supervisor thread, except under _lock.
        self._running: dict[str, Message] = {}
        self._abandoned: set[str] = set()
        self._stopped = False
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = pipe()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.size):
            thread = threading.Thread(target=self._run, name=f"task-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        keep_side_connections()
        try:
            while (message := self._inbox.get()) is not None:
                outcome = execute(message, self.worker_id)
                with self._lock:
                    if message.id in self._abandoned:
                        # stop() already reported it unfinished; the caller owns its fate.
                        logger.warning("Job %s finished after the pool stopped; outcome "
                                       "dropped", message.id)
                        continue
                    self._done.append(outcome)
                poke(self._wake_w)
        finally:
            close_side_connections()
            connections.close_all()

    def free_slots(self) -> int:
        return 0 if self._stopped else self.size - len(self._running)

    def running(self) -> int:
        return len(self._running)

    def running_ids(self) -> list[str]:
        return list(self._running)

    def submit(self, message: Message) -> None:
        if self._stopped:
            raise RuntimeError("The pool is stopped; it takes no more jobs.")
        self._limits.check(message.task_path)
        self._running[message.id] = message
        self._inbox.put(message)

    def collect(self) -> list[Outcome]:
        drain(self._wake_r)
        with self._lock:
            done, self._done = self._done, []
        for outcome in done:
            self._running.pop(outcome.id, None)
        return done

    def cancel(self, job_id: str, grace: float | None) -> bool:
        """A thread cannot be killed: the task sees ``context.is_cancelled()`` and stops
        by itself (``grace`` is not enforced). Returns whether it runs here."""
        return job_id in self._running

    def waitables(self) -> list[Any]:
        return [self._wake_r]

    def next_deadline(self) -> float | None:
        return None  # no limits are enforced, so nothing ever falls due

    def stop(self, *, at_once: bool = False, timeout: float | None = None) -> list[str]:
        """Stop taking work; wait for running jobs unless ``at_once``, up to ``timeout`` s.

        Returns the ids of jobs that did not finish: those never started (taken back
        from the queue) and those still running when the wait ended, whose threads are
        abandoned (daemons; they die with the process) and whose outcomes, should they
        finish later, are dropped. Outcomes of jobs that did finish are returned by the
        next ``collect()``.
        """
        if self._stopped:
            return []
        self._stopped = True
        unfinished = []
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message is not None:
                unfinished.append(message.id)
                self._running.pop(message.id, None)
        for _ in self._threads:
            self._inbox.put(None)
        if not at_once:
            end = None if timeout is None else time.monotonic() + timeout
            for thread in self._threads:
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
        with self._lock:
            finished = {outcome.id for outcome in self._done}
            abandoned = [job_id for job_id in self._running if job_id not in finished]
            self._abandoned.update(abandoned)
        for job_id in abandoned:
            del self._running[job_id]
        return unfinished + abandoned
