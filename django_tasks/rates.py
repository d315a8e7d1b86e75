"""Rate limits that hold across every worker on every host: Celery's ``rate_limit``.

``@task(rate_limit="30/s")`` limits a task, ``OPTIONS["RATE_LIMITS"] = {"emails":
"100/m"}`` a queue. Celery enforces its limit per worker, so N workers run N times
it; here the job table's database keeps one row per limited key (``RateLimit``: the
task's path, or ``queue:<name>``) holding the time of its next free start slot.

The scheme is strict spacing (a generic cell rate algorithm with no burst): a limit of
``n`` per ``period`` lets one job start every ``period / n`` seconds, so no window of
``period`` seconds sees more than ``n`` starts, however many workers claim. A worker
that claims jobs of a limited key reserves start slots for them in one statement
(:meth:`django_tasks.jobs.store.JobStore.reserve`), but only slots within
:data:`HORIZON` seconds from now: it holds those jobs and starts each at its slot (one
it could not start on time reserves another: ``worker.pacing``). The others go back
READY, due when the key's next free slot comes within the horizon: waiting jobs
neither fail nor busy-loop, and a worker holds few of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["HORIZON", "Rate", "parse_rate", "queue_key"]

#: Seconds ahead a worker reserves start slots for the jobs it claims (and holds them).
HORIZON = 1.0

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """``count`` starts per ``period`` seconds."""

    count: float
    period: float
    #: As written (``"30/s"``), for messages and the admin.
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return self.period / self.count


def parse_rate(value: Any) -> Rate | None:
    """Celery's rate syntax: ``"30/s"``, ``"100/m"``, ``"1000/h"``, or a number (per
    second). None (or 0, or ``"0"``) is no limit. ``ValueError`` says what is wrong."""
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, str | int | float) else ""
    if isinstance(value, bool) or not text:
        raise ValueError(f"a rate limit is a string such as '30/s', '100/m' or '1000/h' "
                         f"(or a number per second); got {value!r}")
    number, _, unit = text.partition("/")
    try:
        count = float(number)
    except ValueError:
        count = math.nan
    period = _PERIODS.get(unit.strip().lower() or "s")
    if period is None or not math.isfinite(count) or count < 0:
        raise ValueError(f"a rate limit is a string such as '30/s', '100/m' or '1000/h' "
                         f"(or a number per second); got {value!r}")
    if count == 0:
        return None
    return Rate(count=count, period=period, text=text)


def queue_key(queue: str) -> str:
    """The rate-limit key of a queue (a task's key is its dotted path)."""
    return f"queue:{queue}"
