"""How a loop rides out an unreachable broker or database.

The worker's broker and duties threads and the scheduler all do the same: log the
first failure as an error, wait a delay that doubles from 0.1 s to 5 s between tries,
and once a try succeeds log how long the outage lasted. :class:`Outage` is that, once.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Outage"]

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class Outage:
    """The state of one loop's outage: ``None`` when all is well.

    ``failed(exc)`` logs ``"<down> (<error>); <detail>"`` at the first failure and
    returns how long to wait before the next try; ``recovered()`` logs ``"<back> after
    N s<detail>"`` if there was an outage, and resets the delay.
    """

    #: Outages begun in this process (every loop's), and those not over yet: what the
    #: worker's heartbeat reports (``Worker.outages``, ``Worker.in_outage``).
    begun = 0
    ongoing = 0

    def __init__(self, logger: logging.Logger, down: str, back: str) -> None:
        self.logger, self.down, self.back = logger, down, back
        self.since: float | None = None
        self._delay = FIRST_DELAY

    def failed(self, exc: BaseException, detail: str = "retrying") -> float:
        if self.since is None:
            self.since = time.monotonic()
            Outage.begun += 1
            Outage.ongoing += 1
            self.logger.error("%s (%s: %s); %s", self.down, type(exc).__name__,
                              str(exc).strip(), detail)
        delay, self._delay = self._delay, min(MAX_DELAY, self._delay * 2)
        return delay

    def recovered(self, detail: str = "") -> None:
        if self.since is not None:
            self.logger.warning("%s after %.1fs%s", self.back, time.monotonic() - self.since,
                                detail)
            self.since, self._delay = None, FIRST_DELAY
            Outage.ongoing -= 1

    def lasted(self) -> float:
        """Seconds since the outage began (0 if there is none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since
