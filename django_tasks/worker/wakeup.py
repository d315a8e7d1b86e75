"""Self-pipes: how one thread wakes another that sleeps in ``multiprocessing.connection.wait``.

A pipe's read end is a waitable like any socket or process sentinel. Both ends are
non-blocking: one pending byte is enough to wake the sleeper, so a full pipe means
nothing is lost.
"""

from __future__ import annotations

import math
import os
import select
from collections.abc import Iterable
from typing import Any

__all__ = ["Pipe", "Waiter", "drain", "pipe", "poke"]


def pipe() -> tuple[int, int]:
    """A non-blocking (read end, write end) pair."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def poke(fd: int) -> None:
    """Wake whoever waits on the read end of ``fd``'s pipe."""
    try:
        os.write(fd, b"x")
    except (BlockingIOError, OSError):
        pass  # already has a byte waiting (or closed at shutdown)


def drain(fd: int) -> None:
    """Consume pending wake-ups, so the next wait sleeps until the next poke."""
    try:
        os.read(fd, 4096)
    except (BlockingIOError, OSError):
        pass


class Pipe:
    """A self-pipe as one object: ``poke()`` from any thread (or a signal handler) wakes
    whoever waits on it; ``fileno()`` makes it a waitable; ``drain()`` after waking."""

    __slots__ = ("r", "w")

    def __init__(self) -> None:
        self.r, self.w = pipe()

    def fileno(self) -> int:
        return self.r

    def poke(self) -> None:
        poke(self.w)

    def drain(self) -> None:
        drain(self.r)

    def close(self) -> None:
        """Close both ends (once; later calls do nothing)."""
        fds, self.r, self.w = (self.r, self.w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


class Waiter:
    """Waits until one of some waitables (file descriptors, or objects with ``fileno()``)
    is readable, with one ``select.poll`` kept from call to call while the set stays the
    same.

    ``multiprocessing.connection.wait`` builds, fills and closes a selector on every
    call; the worker's main loop waits once or twice per job, so that was a tenth of its
    CPU per no-op job. Registrations are by descriptor number: a set that changes (a
    child replaced) is registered anew.
    """

    __slots__ = ("_fds", "_poll")

    def __init__(self) -> None:
        self._fds: tuple[int, ...] = ()
        self._poll = select.poll()

    def wait(self, waitables: Iterable[Any], timeout: float | None) -> set[int]:
        """The descriptors of ``waitables`` that are readable (or closed at the other
        end), waiting up to ``timeout`` seconds (None: until one is)."""
        fds = tuple(w if type(w) is int else w.fileno() for w in waitables)
        if fds != self._fds:
            self._poll = select.poll()
            for fd in fds:
                self._poll.register(fd, select.POLLIN)
            self._fds = fds
        # poll() counts whole milliseconds: round up, or a wait shorter than one
        # would return at once and spin.
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return {fd for fd, _ in self._poll.poll(ms)}
