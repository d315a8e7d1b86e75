"""Can this process tell for sure that another worker's process is gone?

Only when both run on the same machine, since the same boot, in the same pid namespace:
then a pid whose ``/proc`` entry is missing, or shows another start time (the pid was
reused), names a dead worker. Anything else is "don't know", and the heartbeat timeout
decides. Linux only; elsewhere nobody is ever declared gone by this check.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from typing import Any

__all__ = ["is_gone", "process_key"]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if there is no such pid)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after it.
    return stat.rsplit(")", 1)[-1].split()[19]


@cache
def _machine() -> str:
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    if not boot or not pidns:
        return ""
    return f"{socket.gethostname()}|{boot}|{pidns}"


def process_key(pid: int | None = None) -> str:
    """Identifies the process ``pid`` (default: this one) for :func:`is_gone`; '' if unknown."""
    pid = os.getpid() if pid is None else pid
    machine = _machine()
    started = _start_time(pid)
    return f"{machine}|{pid}|{started}" if machine and started else ""


def is_gone(worker: Any) -> bool:
    """True only when ``worker`` (a Worker row) surely has no process any more."""
    key = getattr(worker, "process_key", "")
    machine, _, pid_part = key.rpartition("|")[0].rpartition("|")
    started = key.rpartition("|")[2]
    if not key or not machine or machine != _machine() or not pid_part.isdigit():
        return False
    return _start_time(int(pid_part)) != started
