"""The Redis broker's wake-up: an idle worker blocks in Redis for its next job.

A worker with a free slot and no job in sight (its last claim came back short) arms its
:class:`RedisWakeSource` before it sleeps. A thread of the source's own then blocks in
``BZPOPMIN`` on the worker's queues, on a connection of its own: the publish that adds
a job's id to one of them (``ZADD``) hands it to the longest-waiting such worker, and
to that one only. The thread hands the id to the broker (its next claim takes it, with
no pop of its own) and pokes a pipe the broker thread sleeps on; only then does it
record the id in the worker's held hash, while the broker thread claims the row.

Compared with a wake-up message (pub/sub) followed by a pop, the job's id arrives with
the wake-up: one round trip to Redis less between the enqueue and the start, and an
enqueue no longer wakes every idle worker of its queue to pop in turn.

What it changes for a crash: a worker killed between the pop and the held-hash write
(a fraction of a millisecond) takes the id with it; the row is still READY, so the
reconciler publishes it again once Redis has lacked it for two reconciles, as for a
publish that was lost. A worker that stops gives back an id popped after it stopped
wanting one (:meth:`RedisWakeSource.disarm`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors

from ...worker.wakeup import drain, pipe, poke

if TYPE_CHECKING:  # the redis package is an extra; broker.py says so when it is missing
    import redis

__all__ = ["BLOCK", "RedisWakeSource"]

#: Seconds one ``BZPOPMIN`` blocks before it is sent again (its connection's socket
#: timeout is longer by ``_MARGIN``). Each costs an idle worker a command that often.
#: Whole seconds: Redis 5 takes no fractions.
BLOCK = 2
_MARGIN = 5.0
#: Seconds ``disarm``/``close`` wait for a pop in flight to end once unblocked.
_SETTLE = 3.0


class RedisWakeSource:
    """Hands an idle worker its next job's id straight from Redis (see the module
    docstring); a waitable for the broker thread (``fileno``, ``drain``, ``close``).

    ``keys`` are the worker's queues' sorted sets, in the order their jobs are taken when
    several have one at once. With Redis's reply as it came (``key``, ``job_id`` and
    ``score``, bytes), ``hand_over(job_id)`` gives a popped id to the broker, then
    ``hold(conn, holder, key, job_id, score)`` records it in ``holder``'s held hash on
    this source's connection ``conn``. A broken connection surfaces from
    :meth:`drain`, and the worker opens a new source.
    """

    def __init__(self, client: redis.Redis, keys: Sequence[str],
                 hand_over: Callable[[Any], None],
                 hold: Callable[[Any, str, Any, Any, Any], None]) -> None:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = BLOCK + _MARGIN
        self._conn = pool.connection_class(**kwargs)
        self._client_id: int | None = None
        # On every connect, not only the first: given a retry policy (``retry`` in
        # CONNECTION_OPTIONS), redis-py connects again by itself when a health check
        # (the broker's default, every 15 s) finds the connection closed (Redis's
        # ``timeout`` while the worker was busy, a CLIENT KILL), and CLIENT UNBLOCK must
        # name the connection the pop is blocked on. (Without one the pop fails, and the
        # worker opens a new source.)
        self._conn.register_connect_callback(self._identify)
        self._conn.connect()
        self._client = client
        self._keys = list(keys)
        self._hand_over = hand_over
        self._hold = hold
        self._r, self._w = pipe()
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._holder: str | None = None  # armed for this holder; None: not armed
        self._popping = False  # a BZPOPMIN is in flight, or its id being settled
        self._closed = self._finished = False
        self._thread = threading.Thread(target=self._listen, name="redis-wake", daemon=True)
        self._thread.start()

    # -- what the broker thread calls ---------------------------------------------------

    def arm(self, holder: str) -> None:
        """Take the next job published to the queues, for ``holder`` (the worker id its
        jobs are held under); one job per arming."""
        with self._cond:
            if self._holder != holder:
                self._holder = holder
                self._cond.notify_all()

    def disarm(self) -> None:
        """Take no more jobs; returns once a pop in flight has handed its id over or
        given it back (at most ``_SETTLE`` seconds)."""
        with self._cond:
            self._holder = None
            popping = self._popping
        deadline = time.monotonic() + _SETTLE
        while popping and time.monotonic() < deadline:
            # Again until it ends: an unblock that came before the BZPOPMIN does nothing.
            self._unblock()
            with self._cond:
                popping = not self._cond.wait_for(lambda: not self._popping, 0.1)

    def fileno(self) -> int:
        return self._r

    def drain(self) -> int:
        """Consume pending wake-ups; raises if the connection broke."""
        drain(self._r)
        if self._error is not None:
            raise self._error
        return 1

    def close(self) -> None:
        """Disarm, stop the thread (it closes its connection) and, once both are done,
        the pipe."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.disarm()
        self._release(closed=True)

    # -- the thread -----------------------------------------------------------------------

    def _listen(self) -> None:
        conn = self._conn
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._holder is not None,
                                        1.0)
                    if self._closed:
                        return
                    if self._holder is None:
                        continue
                    self._popping = True
                try:
                    conn.send_command("BZPOPMIN", *self._keys, BLOCK)
                    reply = conn.read_response()
                    if reply is not None:
                        self._settle(conn, reply)
                finally:
                    with self._cond:
                        self._popping = False
                        self._cond.notify_all()
        except Exception as exc:
            self._error = exc
            poke(self._w)
        finally:
            conn.disconnect()
            self._release(finished=True)

    def _settle(self, conn: Any, reply: list[Any]) -> None:
        """A popped id: handed over if the worker still wants it, else put back."""
        key, job_id, score = reply
        with self._cond:
            holder, self._holder = self._holder, None
        if holder is None:  # disarmed (the worker is stopping) while the pop was blocked
            conn.send_command("ZADD", key, score, job_id)
            conn.read_response()
            return
        self._hand_over(job_id)
        poke(self._w)
        # While the broker thread claims the row: recorded as held, so a give-back or the
        # recovery of this worker puts it back as for any popped id.
        self._hold(conn, holder, key, job_id, score)

    def _identify(self, conn: Any) -> None:
        """Learn the id Redis gave ``conn`` (a connect callback: on the thread that
        connects)."""
        try:
            conn.send_command("CLIENT", "ID", check_health=False)
            self._client_id = conn.read_response()
        except redis_errors.ResponseError:  # CLIENT refused (an ACL, a managed Redis)
            self._client_id = None

    def _unblock(self) -> None:
        """End a BZPOPMIN in flight now (it returns nothing) rather than at its timeout.
        Where CLIENT is refused, its connection is shut instead: an id Redis popped in
        that instant is lost with it, and published again by the reconciler."""
        try:
            if self._client_id is None:
                self._conn.disconnect()
            else:
                self._client.client_unblock(self._client_id)
        except Exception:
            pass  # Redis unreachable: the pop fails on its own

    def _release(self, *, finished: bool = False, closed: bool = False) -> None:
        """The pipe is closed once both the owner closed and the thread finished."""
        with self._cond:
            self._finished |= finished
            self._closed |= closed
            if not (self._finished and self._closed) or self._r < 0:
                return
            fds, self._r, self._w = (self._r, self._w), -1, -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

