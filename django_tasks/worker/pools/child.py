"""The child side of the prefork pool: everything a forked child runs, and how the
supervisor tells how one ended.

A child reads pickled messages from its pipe one at a time, runs each with
:func:`~django_tasks.worker.execute.execute` and sends the pickled outcome back, until
the supervisor closes the pipe or a recycling limit retires it. The supervisor side is
:mod:`.prefork`.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import signal
import sys
from functools import cache
from multiprocessing.connection import wait
from typing import Any

from django.db import connections

from ...jobs.messages import Message
from ...jobs.side import close_side_connections, keep_side_connections
from ...observe import process_exiting
from ..execute import connections_dropped, execute

__all__ = ["EXIT_GRACE", "PICKLE", "RECALLED", "STARTED", "child_main", "describe_exit", "exited",
           "prctl"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

#: How long the supervisor waits for a child that is exiting (or killed) to be gone.
EXIT_GRACE = 5.0

#: Messages and outcomes cross the pipe to a child pickled: both ends are this code, in
#: a process forked from this one, and every value in them is plain JSON data already
#: (checked at enqueue and by ``check_return_value``). Pickle does it in a third of
#: JSON's time, on a path every job takes twice.
PICKLE = pickle.HIGHEST_PROTOCOL

#: The two counters a slot shares with its child (``_Slot.shared`` in :mod:`.prefork`):
#: the number of the last message the child started, and of one the supervisor took
#: back. Both sides read and write them under the slot's lock.
STARTED, RECALLED = 0, 1

#: Connections a child inherited from the supervisor: kept referenced, never closed.
_inherited_connections: list[Any] = []


@cache
def prctl() -> Any:
    """libc's prctl on Linux, else None. Resolved in the supervisor, before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when the supervisor dies, even by ``kill -9``.

    The death signal fires when the *thread* that forked us exits: the pool forks from
    the worker's main thread, which lives as long as the process.
    """
    prctl_ = prctl()
    if prctl_ is not None:
        prctl_(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
              ctypes.c_ulong(0), ctypes.c_ulong(0))  # -1 on failure: nothing better to do
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def _forget_inherited_connections() -> None:
    # Closing a connection inherited through fork would act on the supervisor's
    # session (for PostgreSQL, send Terminate on its socket). So drop the wrappers
    # from this thread's handler, and keep them referenced so that not even a
    # finalizer runs on them; the child opens its own connections lazily.
    # (psycopg would skip PQfinish anyway: it checks the pid.)
    for conn in connections.all(initialized_only=True):
        _inherited_connections.append(conn)
        del connections[conn.alias]


def _max_rss_kib() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB elsewhere


def child_main(conn: Any, worker_id: str, siblings: list[Any], parent_pid: int,
                max_tasks: int | None, max_memory: int | None, shared: Any = None,
                lock: Any = None) -> None:
    _die_with_parent(parent_pid)
    # Close the supervisor's pipe ends that fork copied in here (ours and the other
    # slots'), so each child sees EOF as soon as the supervisor closes its end or dies.
    for pipe in siblings:
        pipe.close()
    # The supervisor owns shutdown: a terminal's Ctrl-C reaches the whole process
    # group, and the children must finish their job rather than die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _forget_inherited_connections()
    connections_dropped()
    keep_side_connections()
    done = 0
    seq = 0  # messages read; the supervisor numbers those it sends the same way
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        seq += 1
        if lock is not None:
            # A job sent behind another may have been taken back meanwhile (_Slot.shared):
            # under the slot's lock, either it is recalled or it is ours to start.
            with lock:
                recalled = shared[RECALLED] == seq
                if not recalled:
                    shared[STARTED] = seq
            if recalled:
                continue
        outcome = execute(Message.from_wire(pickle.loads(data)), worker_id, soft_time_limits=True)
        done += 1
        retire = None
        if max_tasks is not None and done >= max_tasks:
            retire = f"max_tasks_per_child={max_tasks} reached"
        elif max_memory is not None and (rss := _max_rss_kib()) >= max_memory:
            retire = f"max_memory_per_child={max_memory} KiB reached ({rss} KiB)"
        try:
            conn.send_bytes(pickle.dumps({"outcome": outcome.to_wire(), "retire": retire}, PICKLE))
        except OSError:
            break  # the supervisor is gone
        if retire:
            break
    process_exiting()  # spans and enqueue counts it still holds (docs/observability.md)
    close_side_connections()
    connections.close_all()  # only connections this child opened (see above)


def describe_exit(pid: int | None, exitcode: int | None) -> str:
    if exitcode is None:
        return f"pid {pid}, exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        hint = ": out of memory, or killed by hand?" if -exitcode == signal.SIGKILL else ""
        return f"pid {pid}, killed by signal {name}{hint}"
    return f"pid {pid}, exit code {exitcode}"


def exited(process: Any, ready: set[int] | None = None) -> bool:
    """Has ``process`` exited? Reaps it, so its ``exitcode`` is set, when it has.
    ``ready``: the descriptors found readable just now, if known (a sentinel not among
    them is a child alive)."""
    if ready is not None and process.sentinel not in ready:
        return False
    # The sentinel (a pipe the child holds open until it exits) becomes readable a
    # moment before the kernel lets us reap the child, so is_alive() alone could miss
    # a death that just woke the supervisor, which would then spin until it could.
    if not process.is_alive():
        return True
    if not wait([process.sentinel], 0):
        return False
    process.join(EXIT_GRACE)
    if process.is_alive():  # it closed the fd itself: it is in no state to run jobs
        process.kill()
        process.join()
    return True
