"""Self-pipes: how one thread wakes another that sleeps in ``multiprocessing.connection.wait``.

A pipe's read end is a waitable like any socket or process sentinel. Both ends are
non-blocking: one pending byte is enough to wake the sleeper, so a full pipe means
nothing is lost.
"""

from __future__ import annotations

import os

__all__ = ["Pipe", "drain", "pipe", "poke"]


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
