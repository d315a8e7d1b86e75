"""Rate limits, the worker's half (``django_tasks.rates`` says how they hold globally).

Run by the broker thread on the jobs a round trip claimed, before they reach the
ledger's buffer. A job of a limited task or queue gets a start slot reserved within
:data:`~django_tasks.rates.HORIZON` and is held in the buffer until that moment
(``Ledger.add_claimed(hold=...)``); one that gets no slot goes back READY, due when
the key's next free slot comes within the horizon. Jobs of unlimited tasks pass with
one dictionary look-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..jobs.messages import Message
from ..jobs.policy import task_or_none
from ..rates import HORIZON, Rate, parse_rate, queue_key

if TYPE_CHECKING:
    from .loop import TaskWorker

logger = logging.getLogger("django_tasks.worker")

__all__ = ["SPACING", "Pacer", "Slot"]

#: Starts are spaced this much wider than period / count: a start the worker makes up
#: to 5% of the period late (50 ms for a per-second limit) still keeps every window of
#: one period within the limit. A job that would start later gets a new slot instead
#: (``Pacer.repace``), at most ``worker.ledger.REPACE_TRIES`` times in a row.
SPACING = 1.05

#: A start slot: the ``time.monotonic()`` a held job may start at, and the one it must
#: start by (else it is late: a new slot is reserved for it).
Slot = tuple[float, float]


class Pacer:
    """Which claimed jobs start when, under the rate limits of a worker's backend."""

    def __init__(self, worker: TaskWorker) -> None:
        self.worker = worker
        self.queue_rates: dict[str, Rate] = dict(worker.backend.config.rate_limits)
        # (task path, queue) -> the keys that limit it, with their rates (usually none).
        self._keys: dict[tuple[str, str], tuple[tuple[str, Rate], ...]] = {}

    def keys(self, message: Message) -> tuple[tuple[str, Rate], ...]:
        """The rate-limited keys a job counts against: its task's, its queue's."""
        at = (message.task_path, message.queue_name)
        keys = self._keys.get(at)
        if keys is None:
            found = []
            task = task_or_none(message.task_path)
            try:
                rate = parse_rate(getattr(task, "rate_limit", None))
            except ValueError:
                rate = None  # refused when the task was declared
            if rate is not None:
                found.append((message.task_path, rate))
            if message.queue_name in self.queue_rates:
                found.append((queue_key(message.queue_name), self.queue_rates[message.queue_name]))
            keys = self._keys[at] = tuple(found)
        return keys

    def pace(self, jobs: Sequence[Message]) -> tuple[list[Message], dict[str, Slot]]:
        """Reserve start slots for the limited ones among ``jobs``: returns the jobs to
        buffer and, for those that must wait, their :data:`Slot`. Jobs given no slot
        within the horizon are given back (due at the next one)."""
        hold, later = self._reserve(jobs)
        if later:
            self._give_back([m for m in jobs if m.id in later], later)
        return [m for m in jobs if m.id not in later], hold

    def repace(self) -> None:
        """Buffered jobs that missed their slot (``Ledger.late``) reserve new ones; those
        that get none within the horizon go back READY, due at the next one. The slot
        they missed stays unused: a start made later than the tolerance could make a
        window of one period hold one start too many."""
        ledger = self.worker.ledger
        late = ledger.late()
        if not late:
            return
        hold, later = self._reserve(late)
        holder, back = ledger.reslot(hold, later)
        if back:
            try:
                self._give_back(back, later)
            except BaseException:
                ledger.restore(holder, back, late=True)
                raise

    def _give_back(self, back: Sequence[Message], later: dict[str, float]) -> None:
        due = datetime.fromtimestamp(max(later[m.id] for m in back), UTC)
        self.worker.store.give_back_at(back, due)
        logger.debug("Rate limits: %d job(s) given back until %s", len(back), due)

    def _reserve(self, jobs: Sequence[Message]) -> tuple[dict[str, Slot], dict[str, float]]:
        """Start slots for the limited ones among ``jobs`` (``{id: Slot}``), and the
        epoch second each of those that got none may be claimed again (``{id: t}``)."""
        limited: dict[str, tuple[Rate, list[Message]]] = {}
        for m in jobs:
            for key, rate in self.keys(m):
                limited.setdefault(key, (rate, []))[1].append(m)
        if not limited:
            return {}, {}
        store = self.worker.store
        hold: dict[str, Slot] = {}
        later: dict[str, float] = {}
        for key, (rate, members) in limited.items():
            members = [m for m in members if m.id not in later]
            if not members:
                continue
            interval = rate.interval * SPACING
            asked = time.monotonic()
            next_at, granted, now = store.reserve(key, interval, len(members), HORIZON)
            # The database's ``now`` was read between ``asked`` and ``clock``: counting
            # from ``clock`` never starts a job early, and the time the reservation took
            # comes off how late the job may start.
            clock = time.monotonic()
            tolerance = rate.period * (SPACING - 1) - (clock - asked)
            first = next_at - granted * interval
            for i, m in enumerate(members):
                if i < granted:
                    at = clock + first + i * interval - now
                    was = hold.get(m.id)
                    hold[m.id] = (at, at + tolerance) if was is None else (
                        max(was[0], at), min(was[1], at + tolerance))
                else:
                    later[m.id] = max(later.get(m.id, 0.0), next_at - HORIZON)
        for i in later:
            hold.pop(i, None)
        return hold, later
