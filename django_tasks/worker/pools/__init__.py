"""Execution pools: where claimed jobs run.

Every pool has ``size`` slots and the same small surface, driven by the worker loop
from one thread:

- ``start()``; ``submit(message)`` to a free slot (``free_slots()`` > 0);
  ``idle_slots()``: of those, how many start their job at once (the prefork pool may
  also take a job behind a busy child's short one, which waits there), and
  ``began()``: the ids of such waiting jobs that have started since the last call,
  and ``taken_back()``: those that will not start there after all (their child turned
  out busy, died or retired), handed back unstarted;
- ``collect()``: the outcomes finished since the last call (never blocks);
- ``waitables()``: objects for ``multiprocessing.connection.wait()`` that become ready
  when ``collect()`` has something to do, and ``next_deadline()``: seconds until it has
  something to do anyway (a hard time limit falls due), or None;
- ``running()`` / ``running_ids()``: jobs submitted and not yet collected;
- ``stop(at_once=False, timeout=None)``: see :meth:`PreforkPool.stop`.

Each pool is a module of this package: :mod:`.prefork` (the default), :mod:`.threads`
(``threads`` and ``inline``).

Messages and outcomes cross to prefork children pickled (plain JSON data either way).
Only the prefork pool can enforce ``time_limit`` / ``soft_time_limit`` and survive a
job that kills its process; the threads and inline pools run jobs inside the worker process itself.
"""

from __future__ import annotations

from typing import Any

from .prefork import PreforkPool
from .threads import InlinePool, ThreadPool

__all__ = ["POOLS", "InlinePool", "PreforkPool", "ThreadPool", "make_pool"]

POOLS: dict[str, type[InlinePool] | type[ThreadPool] | type[PreforkPool]] = {
    "prefork": PreforkPool, "threads": ThreadPool, "inline": InlinePool,
}


def make_pool(kind: str, size: int, worker_id: str,
              **options: Any) -> InlinePool | ThreadPool | PreforkPool:
    """Build the pool named ``kind``; ``options`` go to its constructor.

    ``max_tasks_per_child`` and ``max_memory_per_child`` (KiB) are prefork options;
    the other pools accept None for them and raise ValueError for anything else.
    """
    try:
        cls = POOLS[kind]
    except KeyError:
        raise ValueError(f"Unknown pool {kind!r}; choose one of {', '.join(POOLS)}.") from None
    return cls(size, worker_id, **options)
