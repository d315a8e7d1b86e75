"""Pure retry maths: given an attempt and what went wrong, when does the job run next?

No I/O, no clock: ``now`` and the random source are parameters, so tests can pin them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from .exceptions import Retry

__all__ = ["backoff_delay", "next_attempt_at"]


def backoff_delay(
    attempt: int,
    *,
    backoff: float,
    backoff_max: float,
    jitter: bool,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential: ``backoff * 2 ** (attempt - 1)``, capped at ``backoff_max``. With
    ``jitter`` the delay is drawn uniformly from the upper half of that, ``[d/2, d]``,
    so retries of jobs that failed together spread out but never come back sooner
    than half the nominal delay.
    """
    # A float power: no huge int for attempt 10,000, and 2.0 ** 1000 is already far past
    # any backoff_max (an int power overflowed float() past attempt ~1025).
    delay = min(backoff_max, backoff * 2.0 ** min(max(0, attempt - 1), 1000))
    if jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


def next_attempt_at(
    *,
    attempt: int,
    max_attempts: int,
    exc: BaseException,
    retry_on: tuple[type[BaseException], ...],
    backoff: float,
    backoff_max: float,
    jitter: bool,
    now: datetime,
    retry_delay: float | None = None,
    dont_retry_on: tuple[type[BaseException], ...] = (),
    rand: Callable[[], float] = random.random,
) -> datetime | None:
    """When to run the next attempt, or None when the job has failed for good.

    A job is retried while attempts remain and either the task asked for it
    (``context.retry(...)``) or the exception is one of ``retry_on``; an empty
    ``retry_on`` means any ``Exception``, and one of ``dont_retry_on`` (subclasses
    included) never retries by itself (a ``Retry`` the task raised always does). A
    ``Retry`` waits its ``countdown``, else ``retry_delay`` when set, else the backoff
    delay.
    """
    if attempt >= max_attempts:
        return None
    if isinstance(exc, Retry):
        wait = exc.countdown if exc.countdown is not None else retry_delay
        if wait is not None:
            return now + timedelta(seconds=max(0.0, wait))
    elif isinstance(exc, dont_retry_on) or not isinstance(exc, retry_on or Exception):
        return None
    delay = backoff_delay(
        attempt, backoff=backoff, backoff_max=backoff_max, jitter=jitter, rand=rand
    )
    return now + timedelta(seconds=delay)
