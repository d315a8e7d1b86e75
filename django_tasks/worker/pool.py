"""Execution pools: where claimed jobs run.

Every pool has ``size`` slots and the same small surface: ``submit`` a message to a
free slot, ``collect`` finished outcomes, ``waitables`` to sleep on until one is
ready, and ``stop``. Messages and outcomes cross process boundaries as JSON bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from typing import Any

from django.db import connections

from ..serialization import dumps
from .execute import execute

__all__ = ["InlinePool", "PreforkPool", "ThreadPool", "make_pool"]


class InlinePool:
    """Runs each job synchronously in the caller, on the caller's connections (tests, demos)."""

    name = "inline"

    def __init__(self, size: int, worker_id: str) -> None:
        self.size = max(1, size)
        self.worker_id = worker_id
        self._done: list[dict[str, Any]] = []

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return self.size

    def running(self) -> int:
        return 0

    def submit(self, message: dict[str, Any]) -> None:
        self._done.append(execute(message, self.worker_id, own_connections=False))

    def collect(self) -> list[dict[str, Any]]:
        done, self._done = self._done, []
        return done

    def waitables(self) -> list[Any]:
        return []

    def stop(self, *, now: bool = False) -> list[str]:
        return []


class ThreadPool:
    """Jobs run in threads of the worker process; each thread has its own DB connection."""

    name = "threads"

    def __init__(self, size: int, worker_id: str) -> None:
        self.size = max(1, size)
        self.worker_id = worker_id
        self._inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._done: deque[dict[str, Any]] = deque()
        self._busy = 0
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.size):
            thread = threading.Thread(target=self._run, name=f"task-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        try:
            while (message := self._inbox.get()) is not None:
                outcome = execute(message, self.worker_id)
                self._done.append(outcome)
                os.write(self._wake_w, b"x")
        finally:
            connections.close_all()

    def free_slots(self) -> int:
        return self.size - self._busy

    def running(self) -> int:
        return self._busy

    def submit(self, message: dict[str, Any]) -> None:
        self._busy += 1
        self._inbox.put(message)

    def collect(self) -> list[dict[str, Any]]:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        done = []
        while self._done:
            done.append(self._done.popleft())
        self._busy -= len(done)
        return done

    def waitables(self) -> list[Any]:
        return [self._wake_r]

    def stop(self, *, now: bool = False) -> list[str]:
        """Take back messages not yet started; let running ones finish unless ``now``."""
        not_started = []
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message is not None:
                not_started.append(message["id"])
                self._busy -= 1
        for _ in self._threads:
            self._inbox.put(None)
        if not now:
            for thread in self._threads:
                thread.join()
        return not_started


def _child_main(conn: Any, worker_id: str, siblings: list[Any]) -> None:
    # Close the supervisor's pipe ends that fork copied in here (ours and earlier
    # siblings'),
    # so each child sees EOF as soon as the supervisor closes its end or dies.
    for pipe in siblings:
        pipe.close()
    # The supervisor owns shutdown: a terminal's Ctrl-C reaches the whole process
    # group, and the children must finish their job rather than die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        outcome = execute(json.loads(data), worker_id)
        conn.send_bytes(dumps(outcome).encode())
    connections.close_all()


class PreforkPool:
    """One forked child process per slot; one job at a time per child."""

    name = "prefork"

    def __init__(self, size: int, worker_id: str) -> None:
        self.size = max(1, size)
        self.worker_id = worker_id
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[Any] = []
        self._pipes: list[Any] = []
        self._job: list[str | None] = []

    def start(self) -> None:
        # Never let a child inherit a live Django connection: both ends would talk
        # over one socket. The supervisor reconnects lazily.
        connections.close_all()
        for slot in range(self.size):
            parent, child = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=_child_main, args=(child, self.worker_id, [*self._pipes, parent]),
                name=f"task-{slot}",
                daemon=True,
            )
            process.start()
            child.close()
            self._children.append(process)
            self._pipes.append(parent)
            self._job.append(None)

    def free_slots(self) -> int:
        return self._job.count(None)

    def running(self) -> int:
        return self.size - self._job.count(None)

    def submit(self, message: dict[str, Any]) -> None:
        slot = self._job.index(None)
        self._job[slot] = message["id"]
        self._pipes[slot].send_bytes(dumps(message).encode())

    def collect(self) -> list[dict[str, Any]]:
        done = []
        for slot, pipe in enumerate(self._pipes):
            if self._job[slot] is not None and pipe.poll():
                done.append(json.loads(pipe.recv_bytes()))
                self._job[slot] = None
        return done

    def waitables(self) -> list[Any]:
        return [p for p, job in zip(self._pipes, self._job, strict=True) if job is not None]

    def stop(self, *, now: bool = False) -> list[str]:
        """Close the pipes so idle children exit; wait for busy ones unless ``now``."""
        if now:
            for process in self._children:
                if process.is_alive():
                    process.kill()
        for pipe in self._pipes:
            pipe.close()
        for process in self._children:
            process.join()
        return []


POOLS = {"prefork": PreforkPool, "threads": ThreadPool, "inline": InlinePool}


def make_pool(kind: str, size: int, worker_id: str) -> InlinePool | ThreadPool | PreforkPool:
    try:
        return POOLS[kind](size, worker_id)
    except KeyError:
        raise ValueError(f"Unknown pool {kind!r}; choose one of {', '.join(POOLS)}.") from None
