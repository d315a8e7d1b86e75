"""Publishing enqueued jobs to Redis without waiting for each reply.

A committed job's publish cannot fail the enqueue: its row is committed already, and if
the publish is lost a worker's reconciler publishes the row (see ``broker.py``). So the
reply carries nothing the caller acts on, and waiting for it (a round trip to Redis,
~50-70 us on loopback, as much again in the client) only delays the caller. The
:class:`Publisher` writes each publish to a connection of its own and reads the replies
later: those already arrived at the next publish, all of them once ``MAX_IN_FLIGHT``
are unread, at :meth:`Publisher.flush` and at interpreter exit. What a reply says is
acted on as before: an error reply (Redis out of memory, a read-only replica) is
logged as a warning naming the jobs.

A broken connection leaves the fate of the publishes in flight unknown, so they are
sent again on a new connection (a publish is idempotent: a sorted set holds an id
once, and a second wake-up costs an idle worker one empty pop); if that fails too they
are logged as not published, for the reconciler, exactly like a publish that failed
while waited for.

Commands go through ``EVAL`` with the script's text rather than ``EVALSHA``: Redis
caches it by its digest all the same, and a Redis restarted between the send and the
reply cannot answer NOSCRIPT for a command whose arguments are no longer at hand.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis import exceptions as redis_errors

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Publisher"]

MAX_IN_FLIGHT = 128  # unread replies before a publish waits for the oldest
READ_AT = 16  # unread replies before a publish reads those that have arrived
IDLE = 1.0  # seconds without a publish after which the connection is looked at first
FLUSH_AT_EXIT = 2.0  # seconds to wait for the last replies at interpreter exit

_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


class Publisher:
    """Sends one script per publish on its own connection, reading replies later.

    ``connect`` makes a new (unconnected) redis-py ``Connection``; ``describe`` names
    Redis for log lines; ``outages`` are the errors meaning Redis is unreachable.
    Thread-safe (one lock around the connection); a forked child starts afresh and
    never touches its parent's socket.
    """

    def __init__(self, script: str, connect: Callable[[], Any], describe: Callable[[], str],
                 outages: tuple[type[BaseException], ...]) -> None:
        self._connect = connect
        self._describe = describe
        self._outages = (*outages, OSError)
        self._lock = threading.Lock()
        self._pid = 0
        self._sent_at = 0.0
        self._conn: Any = None
        self._in_flight: deque[tuple[bytes, list[str]]] = deque()
        body = script.encode()
        # EVAL <script> 0, packed once (RESP); each publish appends its arguments.
        self._head = b"$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(body), body)
        _publishers.add(self)

    def _pack(self, args: Sequence[Any]) -> bytes:
        # Each value packed once: a bulk publish repeats its ranks, due times and queues
        # (0.7 instead of 1.8 us a job).
        ints: dict[int, bytes] = {}
        texts: dict[Any, bytes] = {}
        parts = [b"*%d\r\n" % (3 + len(args)), self._head]
        for arg in args:
            packed = ints if type(arg) is int else texts
            bulk = packed.get(arg)
            if bulk is None:
                data = str(arg).encode()
                bulk = packed[arg] = b"$%d\r\n%s\r\n" % (len(data), data)
            parts.append(bulk)
        return b"".join(parts)

    def send(self, args: Sequence[Any], job_ids: Sequence[str]) -> None:
        """Publish (script arguments ``args``, about ``job_ids``, named if it fails);
        returns once the command is written.

        Replies are read only every ``READ_AT`` publishes: each look at the socket is a
        system call, and together they cost as much as the publish itself.
        """
        command = (self._pack(args), list(job_ids))
        with self._lock:
            if self._pid != os.getpid():  # new, or forked: the socket is the parent's
                self._pid, self._conn, self._in_flight = os.getpid(), None, deque()
            used = self._conn is not None
            now = time.monotonic()
            try:
                # After a pause, look first: a connection Redis closed meanwhile (a
                # restart) would take the next publish without a word.
                if len(self._in_flight) >= READ_AT or now - self._sent_at > IDLE:
                    self._collect(keep=MAX_IN_FLIGHT - 1)
                if self._conn is None:
                    self._conn = self._connect()
                # No health check: its PING would read a publish's reply as its own.
                self._conn.send_packed_command([command[0]], check_health=False)
                self._in_flight.append(command)
                self._sent_at = now
            except self._outages as exc:
                self._broken(exc, [*self._in_flight, command], retry=used)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every reply in flight (tests, shutdown); errors are logged."""
        with self._lock:
            if self._pid != os.getpid() or not self._in_flight:
                return
            try:
                self._collect(keep=0, timeout=timeout)
            except self._outages as exc:
                self._broken(exc, list(self._in_flight), retry=True)

    def _collect(self, *, keep: int | None = None, timeout: float | None = None) -> None:
        """Read the replies that have arrived; with ``keep``, wait for more until at most
        ``keep`` are unread (each wait bounded by ``timeout``, else the socket's). Raises
        if the connection is closed, even with nothing in flight."""
        conn = self._conn
        while conn is not None:
            must = keep is not None and len(self._in_flight) > keep
            if not must and not conn.can_read(timeout=0):  # raises at end of file
                return
            if not self._in_flight:  # nothing was asked: the connection is not sound
                raise redis_errors.ConnectionError("unexpected data from Redis")
            if must and timeout is not None and not conn.can_read(timeout=timeout):
                raise redis_errors.TimeoutError(f"no reply from Redis within {timeout}s")
            try:
                conn.read_response(disconnect_on_error=True)
            except redis_errors.ResponseError as exc:  # Redis said no: nothing to retry
                self._not_published([self._in_flight.popleft()], exc)
            else:
                self._in_flight.popleft()

    def _broken(self, exc: BaseException, commands: list[tuple[bytes, list[str]]], *,
                retry: bool) -> None:
        """The connection failed with ``commands`` unanswered. If it had worked before
        (Redis restarted, the connection was killed), send them again on a new one and
        wait for the replies; what still fails, or failed on a new connection (Redis is
        down), is logged as not published, for the reconciler."""
        self._in_flight.clear()
        self._drop()
        pending = commands
        if retry:
            logger.debug("Redis publish connection broke (%s); sending %d publish(es) "
                         "again", exc, len(commands))
            try:
                conn = self._conn = self._connect()
                conn.send_packed_command([b"".join(c[0] for c in commands)],
                                         check_health=False)
                while pending:
                    try:
                        conn.read_response(disconnect_on_error=True)
                    except redis_errors.ResponseError as error:
                        self._not_published(pending[:1], error)
                    pending = pending[1:]
                return
            except self._outages as again:
                self._drop()
                exc = again
        self._not_published(pending, exc)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.disconnect()
            except Exception:
                pass
            self._conn = None

    def _not_published(self, commands: Sequence[tuple[bytes, list[str]]],
                       exc: BaseException) -> None:
        ids = [i for _, job_ids in commands for i in job_ids]
        if ids:
            logger.warning(
                "Job %s is stored but could not be published (%s at %s: %s); a worker "
                "will publish it when it reconciles with the database",
                ", ".join(ids), type(exc).__name__, self._describe(), exc,
            )


@atexit.register
def _flush_all() -> None:
    for publisher in list(_publishers):
        try:
            publisher.flush(timeout=FLUSH_AT_EXIT)
        except Exception:  # exiting: never mask the program's own outcome
            pass
