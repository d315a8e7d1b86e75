"""A worker's RabbitMQ consumer: one connection, driven by an I/O thread of its own.

The thread declares the worker's queues, sets a per-consumer prefetch
(``basic_qos(global_qos=False)``), consumes, and puts each delivery in a buffer; it
also answers RabbitMQ's heartbeats whatever the worker's threads are doing (a claim
waiting on a lock, a long outcome hook). A message carries one job id, or several (a
bulk enqueue's): each id is a :class:`Delivery` of its own, and the message
(:class:`Parcel`) is acknowledged once every id of it is settled. The broker thread
takes deliveries from the buffer for its claims and acknowledges them once the claim
is committed; the ack is handed to the I/O thread with ``add_callback_threadsafe``,
the only method of a pika ``BlockingConnection`` that another thread may call.

The consumer is also the worker's wake-up source: a delivery pokes a pipe that the
broker thread sleeps on, so an idle worker wakes on the delivery itself, with no
polling of the job table.

A lost connection (RabbitMQ restarted, a network cut) is the I/O thread's business:
RabbitMQ requeues what was not acknowledged, so the buffer is emptied, and the
thread connects again, waiting longer between tries (0.1 s doubling to 5 s). The
outage is logged once, and its end once (:class:`~.connection.Link`, shared with
the publisher). Meanwhile the worker writes outcomes and claims nothing; nothing
else waits for RabbitMQ.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pika import exceptions as amqp

from ...outage import FIRST_DELAY, MAX_DELAY
from ...worker.wakeup import Pipe
from .connection import AMQP_OUTAGES, Link, Topology, connect
from .frames import Arrival, DeliveryReader

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Consumer", "Delivery", "Parcel"]

#: Seconds the I/O thread blocks in pika between looks at ``closed``.
IO_TICK = 0.5
#: Seconds without a new delivery after which a settling :meth:`Consumer.take` stops
#: waiting (RabbitMQ pushes the deliveries of a backlog back to back).
QUIET = 0.02
#: Seconds to wait for the connection and the consumers to be set up.
START_TIMEOUT = 5.0


@dataclass(eq=False)
class Parcel:
    """One AMQP message: a single enqueue's id, or up to ``PACK`` of a bulk enqueue's.

    Acknowledged once each of its ids is settled (claimed, or dropped by the claim);
    given back whole (``basic_nack(requeue=True)``): ids of it already claimed come
    back as duplicates, which their claim drops."""

    tag: int
    connection: int  #: which of the consumer's connections
    left: int  #: ids not settled yet


@dataclass(order=True)
class Delivery:
    """One job id of a message, with what orders it (priority, then due time)."""

    rank: tuple[int, int, int]  #: (-priority, due ms, arrival): the claim order
    job_id: str = field(compare=False)
    parcel: Parcel = field(compare=False)
    arrived: float = field(compare=False, default_factory=time.monotonic)


class Consumer:
    """Consumes ``queues`` with at most ``prefetch`` unacknowledged deliveries.

    Raises an AMQP error from the constructor if RabbitMQ cannot be reached; after
    that, it reconnects by itself. ``on_reconnect`` is called (on the I/O thread)
    each time it consumes again after a lost connection.
    """

    def __init__(self, url: str, topology: Topology, queues: Sequence[str],
                 prefetch: int, *, link: Link | None = None,
                 on_reconnect: Any = None) -> None:
        self.url, self.topology, self.queues = url, topology, list(queues)
        self.prefetch = max(1, prefetch)
        self.link = link or Link(url)
        self.on_reconnect = on_reconnect
        #: A worker's broker thread sleeps on it (deliveries wake it).
        self.wakes = False
        self._pipe = Pipe()
        self._cond = threading.Condition()
        self._buffer: list[Delivery] = []
        #: The current connection's unacknowledged messages, by tag (ascending): whether
        #: each is settled. A settled run at the front is acknowledged by one
        #: ``basic_ack(multiple=True)``.
        self._unacked: dict[int, bool] = {}
        self._poked = False  # a wake-up is pending in the pipe
        self._arrivals = 0
        self._generation = 0  # connections made so far
        self._error: BaseException | None = None  # a bug: the worker stops
        self._closed = False
        self._closing = False
        self._connection: Any = None
        self._channel: Any = None
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rabbitmq-consumer",
                                        daemon=True)
        self._first: BaseException | None = None
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.close()
            raise amqp.AMQPConnectionError(f"no answer from RabbitMQ in {START_TIMEOUT:g}s")
        if self._first is not None:
            self.close()
            raise self._first

    # -- the I/O thread ---------------------------------------------------------------

    def _run(self) -> None:
        delay = FIRST_DELAY
        try:
            while not self._closed:
                try:
                    self._consume()
                except AMQP_OUTAGES as exc:
                    if not self._ready.is_set():  # the first connection: the caller raises
                        self._first = exc
                        return
                    if self._closed:
                        return
                    self._lost(exc)
                    self._wake.wait(delay)
                    delay = min(MAX_DELAY, delay * 2)
                else:
                    delay = FIRST_DELAY
        except BaseException as exc:
            if not self._closed:
                self._error = exc
        finally:
            self._ready.set()
            with self._cond:
                self._cond.notify_all()
            self._pipe.poke()

    def _consume(self) -> None:
        """Connect, consume, and process deliveries until closed or the connection fails."""
        connection = connect(self.url)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch, global_qos=False)
            reader = DeliveryReader(channel, self._arrived)
            tags = []
            for queue in self.queues:
                self.topology.declare(channel, queue)
                tags.append(channel.basic_consume(self.topology.name(queue),
                                                  reader.delivered, auto_ack=False))
            with self._cond:
                self._generation += 1
                self._connection, self._channel = connection, channel
                self._unacked = {}
            reader.install(tags)  # after _unacked is reset: it may hand deliveries on
            again = self._ready.is_set()
            self._ready.set()
            self.link.up()
            if again and self.on_reconnect is not None:
                self.on_reconnect()
            while not self._closed:
                connection.process_data_events(time_limit=IO_TICK)
        finally:
            with self._cond:
                self._connection = self._channel = None
            if connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass

    def _lost(self, exc: BaseException) -> None:
        """The connection broke: RabbitMQ requeues every delivery not acknowledged, so
        the buffered ones are forgotten (their tags mean nothing on a new connection)."""
        with self._cond:
            dropped, self._buffer = len(self._buffer), []
        self.link.down(exc, f"the worker writes outcomes and claims nothing until it is "
                            f"back ({dropped} delivery(ies) returned to the queues); "
                            "reconnecting")

    def _arrived(self, arrivals: list[Arrival]) -> None:
        """Buffer the ids of ``arrivals`` (the deliveries of one read, in order)."""
        now = time.monotonic()
        with self._cond:
            generation, buffer, unacked = self._generation, self._buffer, self._unacked
            for delivery_tag, headers, body in arrivals:
                headers = headers or {}
                priority = -int(headers.get("priority", 0))
                due = int(headers.get("due_ms", 0))
                ids = body.decode().split()  # one id, or a bulk enqueue's several
                parcel = Parcel(delivery_tag, generation, len(ids))
                # A message with no id (not ours: someone published to our queue) is
                # settled at once, acknowledged with the next run: left unsettled, it
                # would stop every later ack from going out as one ``multiple`` ack.
                unacked[delivery_tag] = not ids
                for job_id in ids:
                    self._arrivals += 1
                    buffer.append(Delivery((priority, due, self._arrivals), job_id,
                                           parcel, now))
            self._cond.notify_all()
        # One byte wakes the broker thread: a backlog's deliveries, pushed back to back,
        # would write one each (a system call a job) before it drains the pipe.
        if not self._poked:
            self._poked = True
            self._pipe.poke()

    def _settle(self, parcels: Sequence[Parcel], *, ack: bool) -> None:
        """Acknowledge (``ack``) or give back ``parcels`` on the I/O thread; those of an
        earlier connection are skipped (RabbitMQ requeued them).

        Acks are grouped: the settled run at the front of the unacknowledged tags goes
        as one ``basic_ack(multiple=True)``, the rest one by one (each ack is a frame
        and, on the I/O thread, a write: measured, one a delivery was the consumer's
        largest cost in a drain)."""
        with self._cond:
            connection, channel, current = self._connection, self._channel, self._generation
            tags = [p.tag for p in parcels if p.connection == current]
            if connection is None or not tags:
                return
            unacked = self._unacked
            for tag in tags:
                unacked[tag] = True
            upto = 0
            if ack:
                while unacked:
                    front = next(iter(unacked))
                    if not unacked[front]:
                        break
                    del unacked[front]
                    upto = front
            single = [t for t in tags if t > upto]
            for tag in single:
                unacked.pop(tag, None)

        def run() -> None:
            if not channel.is_open:
                return
            if upto:
                channel.basic_ack(upto, multiple=True)
            for tag in single:
                if ack:
                    channel.basic_ack(tag)
                else:
                    channel.basic_nack(tag, requeue=True)

        try:
            connection.add_callback_threadsafe(run)
        except (amqp.AMQPError, OSError):
            pass  # the connection is gone: the server requeued them

    # -- what the broker thread asks ------------------------------------------------------

    def take(self, limit: int, *, settle: float = 0.0, quiet: float = QUIET) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, best first (priority, then due time).

        ``settle``: wait up to that long for the first delivery, then until none has
        arrived for ``quiet`` seconds (a claim right after a publish). Raises what
        stopped the I/O thread (a bug); while RabbitMQ is unreachable, takes nothing.
        """
        with self._cond:
            if settle > 0:
                deadline = time.monotonic() + settle
                seen = -1
                # Even past ``limit``: a later delivery may be a better one.
                while self._error is None and len(self._buffer) < self.prefetch:
                    left = deadline - time.monotonic()
                    if left <= 0 or (self._buffer and seen == self._arrivals):
                        break
                    seen = self._arrivals
                    self._cond.wait(left if not self._buffer else min(left, quiet))
            if self._error is not None:
                raise self._error
            self._buffer.sort()
            taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return taken

    def put_back(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries taken for a claim that failed: offered again (those of the
        current connection; RabbitMQ requeued the others)."""
        with self._cond:
            self._buffer.extend(d for d in deliveries
                                if d.parcel.connection == self._generation)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle ``deliveries`` (their claim is committed, or their job is not READY):
        each message is acknowledged once every id of it is settled."""
        done = []
        with self._cond:
            for delivery in deliveries:
                parcel = delivery.parcel
                parcel.left -= 1
                if parcel.left == 0:
                    done.append(parcel)
        self._settle(done, ack=True)

    def release_held(self, older_than: float) -> int:
        """Return to the queue the messages whose ids were buffered longer than
        ``older_than`` seconds (this worker had no room for them: another may); returns
        how many ids left the buffer. A message some ids of which were claimed already
        goes back whole: those come back as duplicates, dropped by their claim."""
        cutoff = time.monotonic() - older_than
        with self._cond:
            old = {d.parcel for d in self._buffer if d.arrived < cutoff}
        return self._release(old) if old else 0

    def give_back(self, deliveries: Sequence[Delivery]) -> int:
        """Return the messages of ``deliveries`` to the queue (taken, not acknowledged:
        their claim may not have reached the disk before a database outage), with any of
        their ids still buffered; returns how many ids left the buffer."""
        return self._release({d.parcel for d in deliveries})

    def _release(self, parcels: set[Parcel]) -> int:
        with self._cond:
            kept = [d for d in self._buffer if d.parcel not in parcels]
            released, self._buffer = len(self._buffer) - len(kept), kept
            for parcel in parcels:
                parcel.left = 0  # settled: given back
        self._settle(list(parcels), ack=False)
        return released

    def held(self) -> int:
        with self._cond:
            return len(self._buffer)

    @property
    def broken(self) -> bool:
        """Closed, or stopped by a bug (an outage is not: it reconnects)."""
        return self._error is not None or self._closing

    # -- the wake-up source -------------------------------------------------------------

    def fileno(self) -> int:
        return self._pipe.fileno()

    def drain(self) -> int:
        """Consume pending wake-ups; raises what stopped the I/O thread (a bug)."""
        self._poked = False  # before the read: a delivery after it pokes again
        self._pipe.drain()
        if self._error is not None:
            raise self._error
        return 1

    def close(self) -> None:
        """Close the connection once the acks already asked for are sent (RabbitMQ
        requeues what was not acknowledged)."""
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        queued = False
        if connection is not None:
            try:  # behind the acks: the I/O thread runs its callbacks in order
                connection.add_callback_threadsafe(self._stop)
                queued = True
            except Exception:
                pass
        if not queued:
            self._stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=IO_TICK * 4)
            if self._thread.is_alive():  # the connection is stuck: stop regardless
                self._stop()
                self._thread.join(timeout=IO_TICK * 2)
        if not self._thread.is_alive():
            self._pipe.close()

    def _stop(self) -> None:
        self._closed = True
        self._wake.set()
