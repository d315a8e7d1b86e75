"""Connections to RabbitMQ, the queues' declaration, and the confirmed publisher.

pika's ``BlockingConnection`` is not thread-safe. This broker keeps to two rules:

- **publishing**: one connection per thread that publishes (:class:`Publisher` keeps it
  in a ``threading.local``), opened on first use, with publisher confirms on its
  channel. Producers publish from whatever thread commits (request threads, the
  worker's broker thread for a workflow's next step, the duties thread for delays);
  a connection per thread costs one socket each and needs no lock on the hot path.
- **consuming**: one connection per worker, driven by an I/O thread of its own
  (``consumer.py``); other threads reach it only through pika's one thread-safe
  method, ``add_callback_threadsafe``.

A forked child (the prefork pool) never uses its parent's sockets: the publisher
remembers the pid that opened its connections.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
from pika import exceptions as amqp

logger = logging.getLogger("django_tasks.worker")

# pika logs every failed connection attempt at ERROR, with a traceback, several lines
# each; this broker reports outages itself, once (Link). Left alone if the project
# configured pika's logger.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)

__all__ = [
    "AMQP_OUTAGES", "MAX_PRIORITY", "Link", "Publisher", "Topology", "amqp_priority",
    "connect", "describe", "safe_url",
]

#: What an unreachable or restarting RabbitMQ raises (a refused or lost connection, a
#: channel closed under us, a publish the server refused to confirm). OSError: pika
#: lets socket errors through in a few places.
AMQP_OUTAGES: tuple[type[BaseException], ...] = (
    amqp.AMQPConnectionError, amqp.AMQPChannelError, OSError,
)

#: ``x-max-priority`` of every queue: RabbitMQ advises at most 10 levels (each level is
#: a sub-queue in the server); our -100..100 priorities map onto 0..MAX_PRIORITY.
MAX_PRIORITY = 9

#: Seconds a producer waits before trying RabbitMQ again after a failed publish: an
#: enqueue while it is down costs nothing (its row is committed; a worker publishes it).
RETRY_AFTER = 1.0


def amqp_priority(priority: int) -> int:
    """Our priority (-100..100) as an AMQP priority (0..MAX_PRIORITY)."""
    p = min(100, max(-100, int(priority)))
    return round((p + 100) * MAX_PRIORITY / 200)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def describe(exc: BaseException) -> str:
    """``exc`` in one line (pika's connection errors have an empty ``str``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else " ".join(repr(exc).split())


def connect(url: str, *, timeout: float = 3.0, heartbeat: int = 30) -> pika.BlockingConnection:
    """A new blocking connection to ``url`` (its vhost in the path, ``%2F`` for ``/``).

    Raises ``AMQPConnectionError`` (or a subclass) saying why, in one line."""
    try:
        return pika.BlockingConnection(_parameters(url, timeout, heartbeat))
    except amqp.AMQPConnectionError as exc:
        if str(exc).strip():
            raise
        cause = exc.args[0] if exc.args else exc
        raise amqp.AMQPConnectionError(
            " ".join(str(cause).split()) or type(cause).__name__) from exc


def _parameters(url: str, timeout: float, heartbeat: int) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = 10.0
    params.connection_attempts = 1
    params.heartbeat = heartbeat
    params.client_properties = {"connection_name": f"django_tasks pid {os.getpid()}"}
    return params


class Link:
    """Whether this process reaches RabbitMQ, as its publisher and consumer saw last:
    an outage is logged once when the first of them fails, and once when it is over."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.since: float | None = None

    def down(self, exc: BaseException, detail: str) -> bool:
        """Record a failure; logs and returns True if it starts an outage."""
        with self._lock:
            if self.since is not None:
                return False
            self.since = time.monotonic()
        logger.error("RabbitMQ at %s unreachable (%s); %s", safe_url(self.url),
                     describe(exc), detail)
        return True

    def up(self) -> None:
        """Record a success; logs the end of an outage if there was one."""
        if self.since is None:
            return
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            logger.warning("RabbitMQ at %s back after %.1fs", safe_url(self.url),
                           time.monotonic() - since)


@dataclass(frozen=True)
class Topology:
    """The queues: one durable queue per task queue, named ``<prefix>.<queue>``, on the
    default exchange (routing key = queue name)."""

    prefix: str

    def name(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    def declare(self, channel: Any, queue: str) -> Any:
        """Declare the queue of ``queue`` (idempotent: the same arguments every time)."""
        return channel.queue_declare(
            queue=self.name(queue), durable=True,
            arguments={"x-max-priority": MAX_PRIORITY},
        )


class _Confirms:
    """The publisher confirms of one channel: which publishes (by delivery tag) RabbitMQ
    has yet to confirm, and the job ids it refused (a nack, or returned unroutable)."""

    def __init__(self) -> None:
        self.tag = 0  # the channel's last delivery tag: they count publishes from 1
        self.pending: dict[int, str] = {}  # delivery tag -> job id
        self.refused: list[str] = []
        self.returned = False

    def sent(self, job_id: str) -> None:
        self.tag += 1
        self.pending[self.tag] = job_id

    def settled(self) -> bool:
        """Whether RabbitMQ answered every publish sent."""
        return not self.pending

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = [t for t in self.pending if t <= tag] if method.multiple else [tag]
        nack = isinstance(method, pika.spec.Basic.Nack)
        for t in tags:
            job_id = self.pending.pop(t, None)
            if nack and job_id is not None:
                self.refused.append(job_id)

    def on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # Unroutable (its queue was deleted after we declared it); its ack follows.
        self.refused.append(body.decode())
        self.returned = True


class _Local(threading.local):
    pid = 0
    connection: Any = None
    channel: Any = None
    confirms: _Confirms
    declared: set[str]
    retry_at = 0.0

    def __init__(self) -> None:
        self.declared = set()
        self.confirms = _Confirms()


class Publisher:
    """Publishes job ids, confirmed by RabbitMQ before :meth:`publish` returns.

    One connection per thread (see the module docstring). A publish of many ids sends
    them all, then waits once for their confirms (one window, not a round trip each). A
    publish that fails (the server down, the connection lost) returns the ids not
    confirmed and drops the connection; for ``RETRY_AFTER`` seconds afterwards publishes
    fail at once rather than each waiting for a refused connection. Ids RabbitMQ
    refused (a nack, a queue deleted since it was declared) are returned too.

    pika's blocking channel waits for each publish's confirm by itself; the window is
    kept here instead, on the asynchronous channel under it (``channel._impl``), waited
    for with the blocking channel's own loop (``_flush_output``): pika has no public
    windowed confirms.
    """

    def __init__(self, url: str, topology: Topology, link: Link) -> None:
        self.url = url
        self.topology = topology
        self.link = link
        self._local = _Local()

    def _channel(self) -> Any:
        local = self._local
        if local.pid != os.getpid():  # new thread state, or a forked child
            local.pid, local.connection, local.channel = os.getpid(), None, None
            local.declared = set()
        if local.channel is None or not local.channel.is_open:
            if time.monotonic() < local.retry_at:
                raise amqp.AMQPConnectionError("RabbitMQ was unreachable less than "
                                               f"{RETRY_AFTER:g}s ago")
            self._drop()
            local.connection = connect(self.url)
            local.channel = local.connection.channel()
            local.declared = set()
            confirms = local.confirms = _Confirms()
            selected: list[Any] = []
            local.channel._impl.confirm_delivery(ack_nack_callback=confirms.on_confirm,
                                                 callback=selected.append)
            local.channel._impl.add_on_return_callback(confirms.on_return)
            local.channel._flush_output(lambda: bool(selected))
        return local.channel

    def _drop(self) -> None:
        local = self._local
        conn, local.connection, local.channel = local.connection, None, None
        if conn is not None and local.pid == os.getpid():
            try:
                conn.close()
            except Exception:
                pass

    def publish(self, entries: Sequence[tuple[str, str, int, int]]) -> list[str]:
        """Publish ``(job id, queue, priority, due ms)`` entries, persistent, then wait
        for their confirms (one window); returns the ids that were not confirmed (an
        outage, a refusal: nothing raised).

        A connection that worked before and fails now (RabbitMQ restarted, or closed
        it while it was idle) is replaced once at once, resending what was not
        confirmed (a duplicate is dropped by the claim); only a failure on a new
        connection is an outage.
        """
        todo = list(entries)
        refused: list[str] = []
        while True:
            fresh = self._local.channel is None or self._local.pid != os.getpid()
            sent = 0
            try:
                channel = self._channel()
                confirms = self._local.confirms
                for entry in todo:
                    self._send(channel, *entry)
                    confirms.sent(entry[0])
                    sent += 1
                channel._flush_output(confirms.settled)
            except AMQP_OUTAGES as exc:
                confirms = self._local.confirms
                unconfirmed = set(confirms.pending.values())
                refused += confirms.refused
                todo = [e for e in todo[:sent] if e[0] in unconfirmed] + todo[sent:]
                self._drop()
                if not fresh:
                    continue  # a stale connection: one more try, on a new one
                self._local.retry_at = time.monotonic() + RETRY_AFTER
                ids = [e[0] for e in todo] + refused
                if not self.link.down(exc, "jobs are stored and published from the "
                                           "database by a worker once it is back"):
                    logger.debug("Not published (RabbitMQ unreachable): %s", ", ".join(ids))
                return ids
            self.link.up()
            refused += confirms.refused
            confirms.refused = []
            if confirms.returned:  # a queue deleted: declare it again next time
                confirms.returned = False
                self._local.declared = set()
            if refused:
                logger.warning("RabbitMQ refused %d publish(es) (%s); a worker publishes "
                               "them from the database", len(refused), ", ".join(refused))
            return refused

    def counts(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (messages ready, consumers)}``, declaring the queues; raises an
        AMQP error if RabbitMQ cannot be reached (a stale connection is replaced once)."""
        while True:
            fresh = self._local.channel is None or self._local.pid != os.getpid()
            try:
                channel = self._channel()
                counts = {}
                for queue in queues:
                    method = self.topology.declare(channel, queue).method
                    self._local.declared.add(queue)
                    counts[queue] = (method.message_count, method.consumer_count)
                return counts
            except AMQP_OUTAGES:
                self._drop()
                if fresh:
                    raise

    def _send(self, channel: Any, job_id: str, queue: str, priority: int, due: int) -> None:
        """One persistent publish, its confirm awaited by :meth:`publish`."""
        if queue not in self._local.declared:
            self.topology.declare(channel, queue)
            self._local.declared.add(queue)
        # The asynchronous channel: buffered, written by the window's wait, not one
        # system call per publish.
        channel._impl.basic_publish(
            exchange="", routing_key=self.topology.name(queue), body=job_id.encode(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                priority=amqp_priority(priority), timestamp=due // 1000,
                headers={"due_ms": due, "priority": priority}, content_type="text/plain",
            ),
            # Unroutable (the queue was deleted after we declared it): returned to us
            # (_Confirms.on_return), not dropped.
            mandatory=True,
        )

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()
