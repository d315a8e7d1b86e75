"""The Redis broker's wake-up channel: a worker serving some queues sleeps until a job
is published to one of them (the publish script PUBLISHes on ``<prefix>:wake:<queue>``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...worker.wakeup import drain, pipe, poke

if TYPE_CHECKING:  # the redis package is an extra; broker.py says so when it is missing
    import redis

__all__ = ["RedisWakeSource"]


class RedisWakeSource:
    """Wakes an idle worker when jobs are published to its queues (Redis pub/sub).

    A thread of its own blocks in the subscription and pokes a pipe, so the broker
    thread never blocks on Redis: the pipe is what it waits on, with its poll timer.
    A broken subscription surfaces from :meth:`drain`, and the worker opens a new one.
    """

    def __init__(self, client: redis.Redis, channels: Sequence[str]) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*channels)
        self._r, self._w = pipe()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = self._finished = False
        self._thread = threading.Thread(target=self._listen, name="redis-wake", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            while not self._closed:
                if self._pubsub.get_message(timeout=0.5) is not None:
                    poke(self._w)
        except Exception as exc:
            self._error = exc
            poke(self._w)
        finally:
            try:
                self._pubsub.close()
            except Exception:
                pass
            self._release(finished=True)

    def _release(self, *, finished: bool = False, closed: bool = False) -> None:
        """The pipe is closed once both the owner closed and the thread finished."""
        with self._lock:
            self._finished |= finished
            self._closed |= closed
            if not (self._finished and self._closed):
                return
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    def fileno(self) -> int:
        return self._r

    def drain(self) -> int:
        """Consume pending wake-ups; raises if the subscription broke."""
        drain(self._r)
        if self._error is not None:
            raise self._error
        return 1

    def close(self) -> None:
        """Stop listening (within half a second the thread closes its subscription)."""
        self._release(closed=True)
