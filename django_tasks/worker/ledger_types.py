"""What the worker's ledger (``ledger.py``) hands out: a round trip's batch, the main
loop's view of its load, and a snapshot for tests and status; the pace its buffer
empties at, and how long a job waited to start."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from ..jobs.messages import Outcome, Start

__all__ = ["PACE_SAMPLE", "Batch", "Load", "Pace", "Snapshot", "waited"]

#: Starts timed per measure of how fast the buffer empties (:class:`Pace`).
PACE_SAMPLE = 32


@dataclass(frozen=True)
class Snapshot:
    """The ledger at one moment (:meth:`Ledger.snapshot`), for tests and status."""

    holder: str  #: the worker id the jobs are held under
    buffered: tuple[str, ...]  #: claimed, not started, in the order they will start
    running: tuple[str, ...]  #: started in a slot, no outcome collected yet
    unrecorded_starts: int  #: starts not yet written by a round trip
    unwritten_outcomes: int  #: outcomes not yet written by a round trip
    to_cancel: frozenset[str]  #: running jobs asked to cancel, the pool not told yet
    told: frozenset[str]  #: running jobs asked to cancel, the pool told
    claimed: int  #: jobs claimed since the worker was made
    completed: int  #: outcomes written since the worker was made
    dry: bool  #: the last claim got fewer jobs than it asked for
    drained: bool  #: the last round trip, with nothing held or pending, claimed nothing
    avg_run: float | None  #: seconds a job spends in a slot, moving average (None: none yet)


class Batch(NamedTuple):
    """What one round trip writes and asks for (:meth:`Ledger.take`)."""

    holder: str
    starts: list[Start]
    outcomes: list[Outcome]
    want: int  #: jobs to claim
    held: int  #: jobs buffered or running when it was taken
    #: time.monotonic() of the oldest start it records, itself or by its job's outcome
    #: (None: none): while it is in flight the main thread may hold back starts for it
    #: (``START_RECORD_LAG``), so its commit must wake the main thread.
    starts_since: float | None = None


class Load(NamedTuple):
    """What the main loop decides on (:meth:`Ledger.load`)."""

    running: int
    busy: bool  #: something running, buffered or unwritten
    drained: bool


class Pace:
    """How fast a worker's buffer empties: the seconds between starts while a buffered
    job waits for every slot that frees (then each start follows a slot's completion),
    a moving average of measures of ``PACE_SAMPLE`` starts. A measure ends when the
    buffer runs dry or starts are held back: those seconds say nothing of the pace.
    Used under the ledger's lock."""

    __slots__ = ("_since", "_starts", "per_start")

    def __init__(self) -> None:
        self.per_start: float | None = None  #: seconds (None: not measured yet)
        self._since: float | None = None  # time.monotonic() the measure began
        self._starts = 0

    def observe(self, started: int, clock: float, *, flowing: bool) -> None:
        """``started`` jobs started at ``clock``; ``flowing``: a buffered job is left
        for the next slot that frees, and starts are not held back."""
        if self._since is not None and started:
            self._starts += started
            if self._starts >= PACE_SAMPLE:
                pace = (clock - self._since) / self._starts
                old = self.per_start
                self.per_start = pace if old is None else 0.7 * old + 0.3 * pace
                self._since, self._starts = clock, 0
        if not flowing:
            self._since = None
        elif self._since is None:
            self._since, self._starts = clock, 0


def waited(available_at: str | None, start: datetime) -> float | None:
    """Seconds from ``available_at`` (ISO, the database's clock) to ``start`` (this
    host's); never below 0 (the two clocks may differ by a little)."""
    if not available_at:
        return None
    try:
        due = datetime.fromisoformat(available_at)
    except ValueError:
        return None
    if due.tzinfo is None:
        return None
    return max(0.0, (start - due).total_seconds())
