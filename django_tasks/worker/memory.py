"""How much memory a worker holds: the resident set of its process and its pool's
children, for the Worker row (the heartbeat writes it; the dashboard shows it)."""

from __future__ import annotations

import os
import resource

__all__ = ["tree_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[str]:
    kids: list[str] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(f.read().split())
        except OSError:
            continue
    return kids


def tree_rss() -> int:
    """Bytes resident in this process and its direct children (the prefork pool), now.

    Linux reads ``/proc``; elsewhere, this process's peak resident set (what
    ``getrusage`` knows), or 0."""
    pid = os.getpid()
    own = _rss(pid)
    if own:
        return own + sum(_rss(child) for child in _children(pid))
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return 0
    return peak * 1024 if peak < 1 << 40 else peak  # KiB on Linux, bytes on macOS
