"""The worker's periodic duties, and the duties thread that runs them.

Each duty is a function of the worker and ``now`` (None: the database's clock; tests
pass a time), run every ``interval`` seconds by the duties thread on a database
connection of its own, so a slow claim never delays a heartbeat:

=================  ================================  =======================================
duty               every                             does
=================  ================================  =======================================
heartbeat          ``HEARTBEAT_INTERVAL``            :func:`heartbeat`
rescue             ``HEARTBEAT_INTERVAL``            :func:`rescue`
cancel poll        0.5 s (at most the heartbeat's)   :func:`poll_cancels`
give back          ``BUFFER_HOLD`` / 2 (0.5 s)       :func:`give_back_overdue`
*the broker's*     as ``Broker.duties()`` says       e.g. the Redis broker's ``reconcile``
prune workers      1 h (at most WORKER_RETENTION)    :func:`prune_workers`
=================  ================================  =======================================

``TaskWorker.run_duty(name, now=...)`` runs one of them on the calling thread (tests).
Only the broker's ``outage_errors`` are retried; any other exception is a bug that
stops the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from django.db import connections

from ..jobs.statistics import ROLL_UP
from ..outage import Outage
from .broker_thread import reset_connections
from .ledger import BUFFER_HOLD
from .liveness import is_gone
from .memory import tree_rss

if TYPE_CHECKING:  # the worker builds its duties: no import at run time
    from .loop import TaskWorker

logger = logging.getLogger("django_tasks.worker")

__all__ = [
    "CANCEL_POLL_INTERVAL",
    "WORKER_PRUNE_INTERVAL",
    "Duty",
    "Liveness",
    "counters",
    "duties_of",
    "give_back_overdue",
    "heartbeat",
    "poll_cancels",
    "prune_statistics",
    "prune_workers",
    "rescue",
    "run_duties",
]

#: How often a worker holding jobs asks which of them were asked to cancel (at most;
#: never less often than the heartbeat). An idle worker does not ask.
CANCEL_POLL_INTERVAL = 0.5

#: How often a worker deletes the rows of workers gone longer than WORKER_RETENTION.
WORKER_PRUNE_INTERVAL = 3600.0


class Duty:
    """A periodic duty of the duties thread: ``run(now)`` every ``interval`` seconds.

    First due one interval from now: ``TaskWorker.start()`` registers (a fresh
    heartbeat) and rescues synchronously before the thread starts.
    """

    def __init__(self, name: str, interval: float,
                 run: Callable[[datetime | None], None]) -> None:
        self.name, self.interval, self.run = name, interval, run
        self.due = time.monotonic() + interval


@dataclass
class Liveness:
    """What the heartbeat knows about this worker being alive in the registry."""

    base_id: str  #: the worker id it was started with
    incarnation: int = 1  #: 1 + how many times it was declared dead and came back
    alive_at: float = field(default_factory=time.monotonic)  #: last successful heartbeat
    #: Dispatch paused: heartbeats have failed for over half the WORKER_TIMEOUT, so a
    #: rescuer may have given this worker's jobs to another one.
    holding: bool = False


def duties_of(worker: TaskWorker) -> list[Duty]:
    """Every periodic duty of ``worker``, the broker's included, in the order they run."""
    beat = worker.heartbeat_interval
    return [
        Duty("heartbeat", beat, partial(heartbeat, worker)),
        Duty("rescue", beat, partial(rescue, worker)),
        Duty("cancel poll", min(CANCEL_POLL_INTERVAL, beat), partial(poll_cancels, worker)),
        Duty("give back", BUFFER_HOLD / 2, partial(give_back_overdue, worker)),
        *(Duty(name, interval, run)
          for name, interval, run in worker.broker.duties(worker.queues)),
        Duty("prune workers", min(WORKER_PRUNE_INTERVAL, worker.worker_retention),
             partial(prune_workers, worker)),
        Duty("prune statistics", min(WORKER_PRUNE_INTERVAL, worker.stats_retention),
             partial(prune_statistics, worker)),
    ]


def counters(worker: TaskWorker) -> dict[str, int]:
    """The Worker row's counters, as the heartbeat writes them (no cost on the hot path)."""
    ledger = worker.ledger
    return {"processed": ledger.completed, "failed": ledger.failed, "memory": tree_rss(),
            "outages": Outage.begun, "in_outage": Outage.ongoing > 0}


def heartbeat(worker: TaskWorker, now: datetime | None = None) -> None:
    """Tell the registry this worker is alive; learn if it was declared dead.

    Declared dead, the rescuer gave its claimed jobs back and ended its running ones'
    leases: what it holds is no longer its own. Running jobs finish (their outcomes
    will be discarded) and it comes back under a new id, never as the dead worker.
    """
    liveness = worker.liveness
    if worker.store.heartbeat(worker.worker_id, counters(worker)):
        liveness.alive_at = time.monotonic()
        if liveness.holding:
            liveness.holding = False
            worker.wake_main.poke()
        return
    old = worker.worker_id
    liveness.incarnation += 1
    dropped = worker.ledger.reincarnate(f"{liveness.base_id}~{liveness.incarnation}")
    logger.error(
        "Worker %s was declared dead (no heartbeat for over %gs); its jobs were rescued. "
        "Dropped %d prefetched job(s); registering again as %s",
        old, worker.worker_timeout, dropped, worker.worker_id,
    )
    worker.register()
    liveness.alive_at = time.monotonic()
    liveness.holding = False
    worker.wake_main.poke()


def rescue(worker: TaskWorker, now: datetime | None = None) -> None:
    """Declare silent workers dead and rescue what lost workers held."""
    for holder, why, (released, retried, failed) in worker.store.rescue_orphans(
        worker.worker_id, now, is_gone=is_gone
    ):
        worker.broker.recover(holder)
        logger.warning(
            "Rescued the jobs of worker %s (%s): %d given back, %d to retry, %d failed",
            holder, why, released, retried, failed,
        )


def poll_cancels(worker: TaskWorker, now: datetime | None = None) -> None:
    """Learn which held jobs were asked to cancel. Buffered ones are dropped unstarted
    (a CANCELLED outcome, written by the next round trip with the outcome hooks);
    running ones are handed to the main thread to tell the pool."""
    holder = worker.ledger.holding_as()
    if holder is None:
        return
    ids = worker.store.cancelling(holder)
    if not ids:
        return
    # revoke(terminate=True): killed as soon as the main thread tells the pool.
    worker.terminating.update(i for i, terminate in ids.items() if terminate)
    dropped, running = worker.ledger.cancel(ids)
    for m in dropped:
        logger.info("Job %s CANCELLED before it started: task=%s queue=%s", m.id,
                    m.task_path, m.queue_name)
    if dropped:
        worker.wake_broker.poke()
    if running:
        worker.wake_main.poke()


def give_back_overdue(worker: TaskWorker, now: datetime | None = None) -> None:
    """Give back the buffered jobs not started within ``BUFFER_HOLD`` of their claim, so
    that another worker may run them: this one's slots stayed busy far longer than the
    jobs it had measured led it to expect. They go back READY, untouched (no attempt
    counted), and the workers of their queues are woken. Costs nothing while the
    buffer moves: one look at it under the ledger's lock."""
    holder, late = worker.ledger.overdue(BUFFER_HOLD, time.monotonic())
    if not late:
        return
    try:
        released = worker.broker.give_back(late)
    except BaseException:
        worker.ledger.restore(holder, late)
        raise
    logger.info("Gave back %d job(s) not started within %gs of their claim (the slots "
                "stayed busy): other workers may run them", released, BUFFER_HOLD)


def prune_workers(worker: TaskWorker, now: datetime | None = None) -> None:
    """Delete the rows of workers gone for longer than ``WORKER_RETENTION``."""
    retention = timedelta(seconds=worker.worker_retention)
    pruned = worker.store.prune_workers((now or worker.store.now()) - retention)
    if pruned:
        logger.info("Deleted the rows of %d worker(s) gone for over %s", pruned, retention)


def prune_statistics(worker: TaskWorker, now: datetime | None = None) -> None:
    """Roll the statistics up into longer periods as they age (``ROLL_UP``: minutes into
    quarters after 2 hours, quarters into hours after 26), and delete the periods older
    than ``STATS_RETENTION``."""
    now = now or worker.store.now()
    retention = timedelta(seconds=worker.stats_retention)
    pruned = worker.store.prune_statistics(now - retention)
    if pruned:
        logger.info("Deleted %d statistics row(s) older than %s", pruned, retention)
    for age, period in ROLL_UP:
        worker.store.roll_up_statistics(now - age, period)


def run_duties(worker: TaskWorker) -> None:
    """The duties thread: run each duty when due, on this thread's own connection,
    until ``worker.stop_duties`` is set."""
    stop = worker.stop_duties
    outage = Outage(logger, "Duties: broker unreachable", "Duties: broker back")
    try:
        while not stop.is_set():
            clock = time.monotonic()
            due = [d for d in worker.duties if d.due <= clock]
            try:
                for duty in due:
                    duty.run(None)
                    duty.due = time.monotonic() + duty.interval
            except worker.broker.outage_errors as exc:
                delay = outage.failed(exc)
                reset_connections()
                # Starting a buffered job now could run one a rescuer has given to
                # another worker after declaring this one dead: pause dispatch.
                if time.monotonic() - worker.liveness.alive_at > worker.worker_timeout / 2:
                    worker.liveness.holding = True
                stop.wait(delay)
                continue
            outage.recovered()
            next_due = min(d.due for d in worker.duties)
            stop.wait(max(0.0, next_due - time.monotonic()))
    except BaseException:
        worker.bug_in("duties")
    finally:
        connections.close_all()
