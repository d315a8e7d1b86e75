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

__all__ = ["SPACING", "Pacer", "limit_of"]

#: Starts are spaced this much wider than period / count: a start the worker makes up
#: to 5% of the period late (50 ms for a per-second limit) still keeps every window of
#: one period within the limit.
SPACING = 1.05


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

    def pace(self, jobs: Sequence[Message]) -> tuple[list[Message], dict[str, float]]:
        """Reserve start slots for the limited ones among ``jobs``: returns the jobs to
        buffer and, for those that must wait, the ``time.monotonic()`` to start them at.
        Jobs given no slot within the horizon are given back (due at the next one)."""
        limited: dict[str, tuple[Rate, list[Message]]] = {}
        for m in jobs:
            for key, rate in self.keys(m):
                limited.setdefault(key, (rate, []))[1].append(m)
        if not limited:
            return list(jobs), {}
        store = self.worker.store
        hold: dict[str, float] = {}  # id -> time.monotonic() it may start at
        later: dict[str, float] = {}  # id -> epoch seconds it may be claimed again
        for key, (rate, members) in limited.items():
            members = [m for m in members if m.id not in later]
            if not members:
                continue
            interval = rate.interval * SPACING
            next_at, granted, now = store.reserve(key, interval, len(members), HORIZON)
            clock = time.monotonic()  # the database's ``now`` was read just before
            first = next_at - granted * interval
            for i, m in enumerate(members):
                if i < granted:
                    at = clock + first + i * interval - now
                    hold[m.id] = max(hold.get(m.id, 0.0), at)
                else:
                    later[m.id] = max(later.get(m.id, 0.0), next_at - HORIZON)
        if later:
            back = [m for m in jobs if m.id in later]
            due = datetime.fromtimestamp(max(later.values()), UTC)
            store.give_back_at(back, due)
            logger.debug("Rate limits: %d job(s) given back until %s", len(back), due)
        for i in later:
            hold.pop(i, None)
        return [m for m in jobs if m.id not in later], hold


def limit_of(backend: str, key: str) -> str:
    """The limit a rate-limit key stands for, as written (``"30/s"``): the queue's
    ``OPTIONS["RATE_LIMITS"]`` entry or the task's ``rate_limit``; ``"-"`` if neither
    says any more (a task removed in a deploy, a limit taken out of the settings). For
    the admin and ``tasks status``."""
    from django.tasks import task_backends

    try:
        limits = task_backends[backend].config.rate_limits
    except Exception:  # a backend this deploy no longer has
        limits = {}
    for queue, rate in limits.items():
        if queue_key(queue) == key:
            return rate.text
    return str(getattr(task_or_none(key), "rate_limit", None) or "-")
