"""A worker's RabbitMQ consumer: one connection, driven by an I/O thread of its own.

The thread declares the worker's queues, sets a per-consumer prefetch
(``basic_qos(global_qos=False)``), consumes, and puts each delivery in a buffer; it
also answers RabbitMQ's heartbeats whatever the worker's threads are doing (a claim
waiting on a lock, a long outcome hook). The broker thread takes deliveries from the
buffer for its claims and acknowledges them once the claim is committed; the ack is
handed to the I/O thread with ``add_callback_threadsafe``, the only method of a pika
``BlockingConnection`` that another thread may call.

The consumer is also the worker's wake-up source: a delivery pokes a pipe that the
broker thread sleeps on, so an idle worker wakes on the delivery itself, with no
polling of the job table. A broken connection surfaces from :meth:`Consumer.drain`
and :meth:`Consumer.take`; RabbitMQ returns its unacknowledged deliveries to the
queues, and the broker opens a new consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pika import exceptions as amqp

from ...worker.wakeup import Pipe
from .connection import Topology, connect

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Consumer", "Delivery"]

#: Seconds the I/O thread blocks in pika between looks at ``closed``.
IO_TICK = 0.5
#: Seconds without a new delivery after which a settling :meth:`Consumer.take` stops
#: waiting (RabbitMQ pushes the deliveries of a backlog back to back).
QUIET = 0.005
#: Seconds to wait for the connection and the consumers to be set up.
START_TIMEOUT = 5.0


@dataclass(order=True)
class Delivery:
    """One message: a job id, with what orders it (priority, then due time)."""

    rank: tuple[int, int, int]  #: (-priority, due ms, arrival): the claim order
    job_id: str = field(compare=False)
    tag: int = field(compare=False)
    arrived: float = field(compare=False, default_factory=time.monotonic)


class Consumer:
    """Consumes ``queues`` with at most ``prefetch`` unacknowledged deliveries.

    Raises an AMQP error from the constructor if RabbitMQ cannot be reached.
    """

    def __init__(self, url: str, topology: Topology, queues: Sequence[str],
                 prefetch: int) -> None:
        self.url, self.topology, self.queues = url, topology, list(queues)
        self.prefetch = max(1, prefetch)
        self._pipe = Pipe()
        self._cond = threading.Condition()
        self._buffer: list[Delivery] = []
        self._arrivals = 0
        self._error: BaseException | None = None
        self._closed = False
        self._connection: Any = None
        self._channel: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rabbitmq-consumer",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.close()
            raise amqp.AMQPConnectionError(f"no answer from RabbitMQ in {START_TIMEOUT:g}s")
        if self._error is not None:
            self.close()
            raise self._error

    # -- the I/O thread ---------------------------------------------------------------

    def _run(self) -> None:
        connection = None
        try:
            connection = connect(self.url)
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch, global_qos=False)
            for queue in self.queues:
                self.topology.declare(channel, queue)
                channel.basic_consume(self.topology.name(queue), self._on_message,
                                      auto_ack=False)
            self._connection, self._channel = connection, channel
            self._ready.set()
            while not self._closed:
                connection.process_data_events(time_limit=IO_TICK)
        except BaseException as exc:
            if not self._closed:
                self._error = exc
        finally:
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass
            self._ready.set()
            with self._cond:
                self._cond.notify_all()
            self._pipe.poke()

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers or {}
        priority = int(headers.get("priority", 0))
        due = int(headers.get("due_ms", 0))
        with self._cond:
            self._arrivals += 1
            self._buffer.append(Delivery((-priority, due, self._arrivals), body.decode(),
                                         method.delivery_tag))
            self._cond.notify_all()
        self._pipe.poke()

    def _in_io_thread(self, action: Any) -> None:
        """Run ``action(channel)`` on the I/O thread (a lost connection drops it: the
        server then requeues what was not acknowledged)."""
        connection, channel = self._connection, self._channel
        if connection is None or self._error is not None:
            return
        try:
            connection.add_callback_threadsafe(lambda: action(channel))
        except (amqp.AMQPError, OSError):
            pass

    # -- what the broker thread asks ------------------------------------------------------

    def take(self, limit: int, *, settle: float = 0.0) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, best first (priority, then due time).

        ``settle``: wait up to that long for the first delivery, then until none has
        arrived for ``QUIET`` seconds (a claim right after a publish). Raises if
        the connection broke and nothing is buffered.
        """
        with self._cond:
            if settle > 0:
                deadline = time.monotonic() + settle
                seen = -1
                while self._error is None and len(self._buffer) < limit:
                    left = deadline - time.monotonic()
                    if left <= 0 or (self._buffer and seen == self._arrivals):
                        break
                    seen = self._arrivals
                    self._cond.wait(left if not self._buffer else min(left, QUIET))
            if self._error is not None and not self._buffer:
                raise self._error
            self._buffer.sort()
            taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return taken

    def put_back(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries taken for a claim that failed: offered again."""
        with self._cond:
            self._buffer.extend(deliveries)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge (their claim is committed, or their job is not READY)."""
        if deliveries:
            tags = [d.tag for d in deliveries]
            self._in_io_thread(lambda ch: [ch.basic_ack(t) for t in tags])

    def release_held(self, older_than: float) -> int:
        """Return to the queue the deliveries buffered longer than ``older_than``
        seconds (this worker had no room for them: another may); returns how many."""
        cutoff = time.monotonic() - older_than
        with self._cond:
            old = [d for d in self._buffer if d.arrived < cutoff]
            if not old:
                return 0
            self._buffer = [d for d in self._buffer if d.arrived >= cutoff]
        tags = [d.tag for d in old]
        self._in_io_thread(lambda ch: [ch.basic_nack(t, requeue=True) for t in tags])
        return len(old)

    def held(self) -> int:
        with self._cond:
            return len(self._buffer)

    @property
    def broken(self) -> bool:
        return self._error is not None or self._closed

    # -- the wake-up source -------------------------------------------------------------

    def fileno(self) -> int:
        return self._pipe.fileno()

    def drain(self) -> int:
        """Consume pending wake-ups; raises if the connection broke."""
        self._pipe.drain()
        if self._error is not None:
            raise self._error
        return 1

    def close(self) -> None:
        """Close the connection (RabbitMQ requeues what was not acknowledged)."""
        if self._closed:
            return
        self._closed = True
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)  # wake the I/O thread
            except Exception:
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=IO_TICK * 4)
        if not self._thread.is_alive():
            self._pipe.close()
