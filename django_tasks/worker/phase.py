"""Where a worker is in its life: one :class:`Phase`, which only moves forward.

``TaskWorker._enter`` is the one place that moves it. ``stop()`` and ``abort()`` (a
signal handler calls them) only move it and wake the threads; each thread acts on the
phase at its next safe point.

Not phases, because they are not steps of the way out:

- ``crashed``: *why* a worker stopped (a bug in one of its threads); it goes through
  the same phases as any other, and ``manage.py worker`` exits non-zero after it.
- ``liveness.holding``: dispatch paused while heartbeats fail; it comes and goes (the
  next heartbeat that succeeds clears it) in any phase.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Phase"]


class Phase(IntEnum):
    """The phases in order; a worker may skip some (a burst worker goes from RUNNING to
    SHUTTING_DOWN), never go back."""

    #: Claiming jobs and starting them in free slots.
    RUNNING = 0
    #: Asked to stop (``stop()``: a signal, a bug in a thread): nothing more is claimed
    #: or started; running jobs finish, within ``grace`` if one is set.
    STOPPING = 1
    #: Asked to stop at once (``abort()``: a second signal): the main loop leaves at its
    #: next safe point and running jobs are interrupted.
    ABORTING = 2
    #: ``shutdown()`` has begun: the pool is stopped; the duties and beat threads finish
    #: their pass and return. Signals are ignored from here on.
    SHUTTING_DOWN = 3
    #: The main thread has collected its last outcomes: the broker thread writes what is
    #: pending and returns.
    FLUSHING = 4
    #: Signed off: claimed jobs given back, interrupted ones rescued.
    STOPPED = 5
