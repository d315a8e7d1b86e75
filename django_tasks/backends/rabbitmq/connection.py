"""Connections to RabbitMQ, the queues' declaration, and the publisher (confirms read
as they come).

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

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pika
from pika import exceptions as amqp

from .frames import Confirm, ConfirmReader, content

try:  # pika's own plain-TCP transport, written to directly (Publisher._emit); a pika
    # that has no such class (pika>=1.3 is all we ask) goes through its loop instead.
    from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport as _PLAIN
except ImportError:  # pragma: no cover - depends on pika's internals
    _PLAIN = None

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

    def leader(self, queue: str) -> str:
        """The exclusive queue whose owner publishes ``queue``'s delayed jobs and sweeps it
        (:meth:`Publisher.leads`); no message is ever sent to it. ``~`` keeps it apart
        from every task queue's name: a task queue named ``default.x`` is
        ``<prefix>.default.x``."""
        return f"{self.prefix}~leader.{queue}"

    def declare(self, channel: Any, queue: str) -> Any:
        """Declare the queue of ``queue`` (idempotent: the same arguments every time)."""
        return channel.queue_declare(
            queue=self.name(queue), durable=True,
            arguments={"x-max-priority": MAX_PRIORITY},
        )


#: Unconfirmed messages a publishing thread may have; at this many, a publish waits until
#: half of them are confirmed.
WINDOW = 1000
#: Seconds a publish may stay unconfirmed before the next publish waits for it: a
#: connection that takes messages and never confirms them is found out within that.
MAX_AGE = 1.0
#: Seconds a wait for confirms lasts before the connection is deemed broken (dropped,
#: and what it left unconfirmed sent again on a new one).
CONFIRM_TIMEOUT = 10.0
#: Seconds without a publish after which the connection is looked at before it is used:
#: one RabbitMQ closed meanwhile (a restart) would take a publish without a word.
IDLE = 1.0
#: Unconfirmed messages at which a publish reads the confirms that have arrived (each
#: look at the socket costs a poll; until then they wait in the socket's buffer).
READ_AT = 16
#: Seconds to wait for the last confirms at interpreter exit.
FLUSH_AT_EXIT = 2.0
#: Job ids one message carries, at most, when :meth:`Publisher.publish` is given many
#: with the same queue, priority and due time (a bulk enqueue). RabbitMQ's CPU is per
#: message (~40-55 us on the reference machine: one id a message caps a 2-core machine
#: at ~15,000 jobs/s); ten ids a message cost it ~4 us an id, 25 ~2 us (a bulk enqueue
#: of 20,000: 46,000 jobs/s with 10, 50,000 with 25, the database broker 55,000-64,000 in
#: the same runs). The bound keeps what one worker's prefetch (which counts messages)
#: holds for at most ``HOLD`` seconds small.
PACK = 25

#: The reply code of a declare of an exclusive queue another connection holds.
RESOURCE_LOCKED = 405
#: Seconds before a connection refused the lead of a queue tries to take it again: each
#: refusal is a channel error that RabbitMQ logs (one line), and a leader that stopped
#: is replaced within this.
LEAD_RETRY = 10.0

_T = TypeVar("_T")

#: One publish: (job id, queue, priority, due ms).
Entry = tuple[str, str, int, int]

_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


class _Local(threading.local):
    """One thread's connection, and what it sent that RabbitMQ has yet to confirm."""

    pid = 0
    connection: Any = None
    channel: Any = None
    lead_channel: Any = None  # where leader queues are declared (a refusal closes it)
    refused_lead: dict[str, float]  # queue -> when another connection last held its lead
    lead_denied: set[str]  # queues whose leader queue RabbitMQ would not let us declare
    retry_at = 0.0
    used_at = 0.0  # when a publish last used the connection
    tag = 0  # the channel's last delivery tag: they count messages from 1
    declared: set[str]
    #: delivery tag -> (when sent, the entries of that message), oldest first.
    pending: dict[int, tuple[float, list[Entry]]]
    refused: list[str]  # ids nacked, or returned unroutable, not yet reported
    returned = False

    def __init__(self) -> None:
        self.declared = set()
        self.pending = {}
        self.refused = []
        self.refused_lead = {}
        self.lead_denied = set()

    def unconfirmed(self) -> list[Entry]:
        return [e for _, entries in self.pending.values() for e in entries]

    def on_confirm(self, frame: Any) -> None:
        """pika's confirm callback: a confirm it decoded itself (split across reads)."""
        method = frame.method
        self.on_confirms([(method.delivery_tag, method.multiple,
                           isinstance(method, pika.spec.Basic.Nack))])

    def on_confirms(self, confirms: Sequence[Confirm]) -> None:
        """Forget the messages confirmed; those nacked are refused."""
        pending = self.pending
        for tag, multiple, nack in confirms:
            if multiple:  # every tag up to this one: the oldest, at the front
                tags = []
                for t in pending:
                    if t > tag:
                        break
                    tags.append(t)
            else:
                tags = [tag]
            for t in tags:
                sent = pending.pop(t, None)
                if nack and sent is not None:
                    self.refused += [e[0] for e in sent[1]]

    def on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # Unroutable (its queue was deleted after we declared it); its ack follows.
        self.refused += body.decode().split()
        self.returned = True


class Publisher:
    """Publishes job ids, persistent, on one connection per thread with publisher
    confirms, without waiting for each confirm.

    :meth:`send` writes the messages to the socket and returns; the confirms are read
    as they come, at the next publish. It waits only to keep within bounds: at most
    ``WINDOW`` messages unconfirmed, none older than ``MAX_AGE`` (then it waits for the
    confirms, up to ``CONFIRM_TIMEOUT``). :meth:`publish` and :meth:`flush` wait for
    every confirm. A connection that fails with messages unconfirmed (RabbitMQ
    restarted, the connection closed) may or may not have delivered them: they are
    sent again on a new connection, at once (a duplicate is dropped by the claim). A
    connection that fails when new (RabbitMQ is down) is an outage: what was not
    confirmed is logged as not published (a worker's sweep publishes it from the rows),
    and for ``RETRY_AFTER`` seconds publishes fail at once rather than each waiting
    for a refused connection. Nacks and unroutable returns are logged, for the sweep too.

    pika's blocking channel waits for each publish's confirm by itself; the window is
    kept here instead, on the asynchronous channel under it (``channel._impl``), driven
    by the blocking connection's own loop (``_flush_output``): pika has no public
    windowed confirms. The frames are marshalled here, one write per call, not per frame.
    """

    def __init__(self, url: str, topology: Topology, link: Link) -> None:
        self.url = url
        self.topology = topology
        self.link = link
        self._local = _Local()
        self._methods: dict[tuple[int, str], bytes] = {}  # (channel, queue): method frame
        _publishers.add(self)

    def _channel(self) -> Any:
        """This thread's channel; a new connection sends again what the last one left
        unconfirmed."""
        local = self._local
        if local.pid != os.getpid():  # new thread state, or a forked child
            local.pid, local.connection, local.channel = os.getpid(), None, None
            local.lead_channel = None
            local.pending, local.refused, local.tag = {}, [], 0
            local.refused_lead, local.lead_denied = {}, set()
        if local.channel is not None and local.channel.is_open:
            return local.channel
        if time.monotonic() < local.retry_at:
            raise amqp.AMQPConnectionError("RabbitMQ was unreachable less than "
                                           f"{RETRY_AFTER:g}s ago")
        self._drop()
        resend = local.unconfirmed()
        local.connection = connect(self.url)
        channel = local.connection.channel()
        local.declared, local.pending, local.tag = set(), {}, 0
        selected: list[Any] = []
        channel._impl.confirm_delivery(ack_nack_callback=local.on_confirm,
                                       callback=selected.append)
        channel._impl.add_on_return_callback(local.on_return)
        channel._flush_output(lambda: bool(selected))
        ConfirmReader(channel, local.on_confirms).install()
        local.channel = channel
        if resend:
            logger.debug("RabbitMQ publish connection replaced; sending %d unconfirmed "
                         "publish(es) again", len(resend))
            self._emit(channel, self._write(channel, resend))
        return channel

    def _drop(self) -> None:
        local = self._local
        conn, local.connection, local.channel = local.connection, None, None
        local.lead_channel = None
        if conn is not None and local.pid == os.getpid():
            try:
                conn.close()
            except Exception:
                pass

    def send(self, entries: Sequence[Entry]) -> None:
        """Publish ``(job id, queue, priority, due ms)`` entries: written to RabbitMQ's
        connection before this returns, their confirms read later (see the class)."""
        self._run(entries, wait=False)

    def publish(self, entries: Sequence[Entry]) -> list[str]:
        """Publish ``entries`` and wait for their confirms (and any still unconfirmed
        before them); returns the ids that were not confirmed (an outage, a refusal:
        nothing raised)."""
        return self._run(entries, wait=True)

    def flush(self, timeout: float = CONFIRM_TIMEOUT) -> list[str]:
        """Wait for the confirms of what this thread sent (tests, shutdown); returns the
        ids not confirmed."""
        local = self._local
        if local.pid != os.getpid() or not (local.pending or local.refused):
            return []
        return self._run((), wait=True, timeout=timeout)

    def _run(self, entries: Sequence[Entry], *, wait: bool,
             timeout: float = CONFIRM_TIMEOUT) -> list[str]:
        """Send ``entries``, then wait as ``wait`` and the bounds say. A connection that
        worked before and fails now is replaced once at once, sending again what it left
        unconfirmed; only a failure on a new connection is an outage."""
        local = self._local
        while True:
            fresh = local.channel is None or local.pid != os.getpid()
            written = 0
            try:
                if not fresh and time.monotonic() - local.used_at > IDLE:
                    local.connection.process_data_events(time_limit=0)  # closed meanwhile?
                channel = self._channel()
                while True:  # a window at a time
                    chunk = entries[written:written + WINDOW * PACK // 2]
                    self._emit(channel, self._write(channel, chunk))
                    written += len(chunk)
                    local.used_at = time.monotonic()
                    if written >= len(entries):
                        break
                    self._settle(channel, False, timeout)
                if len(local.pending) >= READ_AT:
                    self._read_confirms(channel)
                self._settle(channel, wait, timeout)
            except AMQP_OUTAGES as exc:
                entries = entries[written:]
                self._drop()
                if not fresh:
                    continue  # a stale connection: once more, on a new one
                return self._outage(exc, entries)
            self.link.up()
            return self._refused()

    def _settle(self, channel: Any, wait: bool, timeout: float) -> None:
        """Wait for confirms: all of them if ``wait``, else only what the bounds
        (``WINDOW``, ``MAX_AGE``) ask for. Raises if they do not come within ``timeout``."""
        pending = self._local.pending
        if wait:
            most = 0  # unconfirmed messages left when done waiting
        elif len(pending) >= WINDOW:
            most = WINDOW // 2
        elif pending and next(iter(pending.values()))[0] < time.monotonic() - MAX_AGE:
            most = 0
        else:
            return
        if len(pending) <= most:
            return
        connection = self._local.connection
        deadline = time.monotonic() + timeout
        timer = connection.call_later(timeout, lambda: None)  # wakes the poll at the deadline
        try:
            channel._flush_output(lambda: len(pending) <= most or time.monotonic() >= deadline)
        finally:
            connection.remove_timeout(timer)
        if len(pending) > most:
            raise amqp.AMQPConnectionError(f"no publisher confirm from RabbitMQ in {timeout:g}s")

    def _read_confirms(self, channel: Any) -> None:
        """Read what has arrived (confirms, mostly) without waiting: straight from the
        socket on a plain TCP connection whose output is written (pika's loop costs a
        timer, epoll changes and a poll: with its frame objects, ~290 us a call that
        reads 16 confirms, measured), else through its loop."""
        impl = channel._impl.connection
        sock = _direct(impl)
        if sock is None:
            self._local.connection.process_data_events(time_limit=0)
            return
        try:
            data = sock.recv(_READ_MOST)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise amqp.StreamLostError("RabbitMQ closed the connection")
        impl._on_data_available(data)  # the ConfirmReader: confirms here, the rest to pika

    def _write(self, channel: Any, entries: Sequence[Entry]) -> bytes:
        """``entries`` as the frames of their messages (:func:`_messages`), to write in
        one go; each message is pending until confirmed."""
        local = self._local
        for queue in {e[1] for e in entries} - local.declared:
            self.topology.declare(channel, queue)
            local.declared.add(queue)
        now = time.monotonic()
        number = channel._impl.channel_number
        data: list[bytes] = []
        for group in _messages(entries):
            data.append(self.frames(number, group))
            local.tag += 1
            local.pending[local.tag] = (now, list(group))
        return b"".join(data)

    def _emit(self, channel: Any, data: bytes) -> None:
        """Write ``data`` to the socket before returning: straight to the socket when
        pika has nothing buffered on a plain TCP connection (its loop costs two epoll
        changes and a poll a publish, measured ~30 us), else through its loop."""
        if not data:
            return
        connection = channel._impl.connection
        if connection._transport is None:  # closed under us
            raise amqp.StreamLostError("the connection to RabbitMQ is closed")
        sock = _direct(connection)
        if sock is not None:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            connection.bytes_sent += sent  # pika's heartbeats look at it
            data = data[sent:]
            if not data:
                return
        connection._output_marshaled_frames([data])
        channel._flush_output()

    def frames(self, channel_number: int, group: Sequence[Entry]) -> bytes:
        """One persistent message carrying the ids of ``group`` (one queue, priority
        and due time), as the frames to write: the method frame is cached per queue,
        the header and body frames are packed by :func:`.frames.content` (a single
        enqueue's due time is new each time), the body is the ids separated by spaces."""
        _, queue, priority, due = group[0]
        body = " ".join(e[0] for e in group).encode()
        key = (channel_number, queue)
        method = self._methods.get(key)
        if method is None:
            if len(self._methods) > 1000:
                self._methods.clear()
            # mandatory: unroutable (the queue was deleted after we declared it) is
            # returned to us (_Local.on_return), not dropped.
            publish = pika.spec.Basic.Publish(exchange="", routing_key=self.topology.name(queue),
                                              mandatory=True)
            method = self._methods[key] = pika.frame.Method(channel_number, publish).marshal()
        return method + content(channel_number, body, priority, amqp_priority(priority), due)

    def _outage(self, exc: BaseException, entries: Sequence[Entry]) -> list[str]:
        """RabbitMQ cannot be reached: what was not confirmed is left to the sweep."""
        local = self._local
        local.retry_at = time.monotonic() + RETRY_AFTER
        ids = [e[0] for e in (*local.unconfirmed(), *entries)] + local.refused
        local.pending, local.refused = {}, []
        if not self.link.down(exc, "jobs are stored and published from the database by "
                                   "a worker once it is back"):
            logger.debug("Not published (RabbitMQ unreachable): %s", ", ".join(ids))
        return ids

    def _refused(self) -> list[str]:
        """The ids RabbitMQ refused since the last call, logged."""
        local = self._local
        refused, local.refused = local.refused, []
        if local.returned:  # a queue deleted: declare it again next time
            local.returned = False
            local.declared = set()
        if refused:
            logger.warning("RabbitMQ refused %d publish(es) (%s); a worker publishes "
                           "them from the database", len(refused), ", ".join(refused))
        return refused

    def counts(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (messages ready, consumers)}``, declaring the queues; raises an
        AMQP error if RabbitMQ cannot be reached (a stale connection is replaced once)."""
        def count(channel: Any) -> dict[str, tuple[int, int]]:
            counts = {}
            for queue in queues:
                method = self.topology.declare(channel, queue).method
                self._local.declared.add(queue)
                counts[queue] = (method.message_count, method.consumer_count)
            return counts

        return self._on_channel(count)

    def leads(self, queues: Sequence[str]) -> set[str]:
        """Those of ``queues`` this thread's connection leads: it holds their leader queue
        (:meth:`Topology.leader`), declared exclusive, taken here where nobody holds it.
        RabbitMQ deletes an exclusive queue with the connection that declared it, so the
        lead passes to another worker's next look when its holder's connection closes
        (the worker stopped, was killed, or lost RabbitMQ). Raises an AMQP error if
        RabbitMQ cannot be reached (a stale connection is replaced once)."""
        def lead(channel: Any) -> set[str]:
            now = time.monotonic()
            return {queue for queue in queues if self._holds_lead(queue, now)}

        return self._on_channel(lead)

    def _holds_lead(self, queue: str, now: float) -> bool:
        """Whether this thread's (open) connection holds ``queue``'s leader queue, taking
        it if nobody does; a connection refused it asks again after ``LEAD_RETRY``."""
        local = self._local
        if queue in local.lead_denied:  # not asked again: each refusal is a log line
            return True
        if now - local.refused_lead.get(queue, -LEAD_RETRY) < LEAD_RETRY:
            return False
        if local.lead_channel is None or not local.lead_channel.is_open:
            local.lead_channel = local.connection.channel()
        try:
            local.lead_channel.queue_declare(queue=self.topology.leader(queue), exclusive=True)
        except amqp.ChannelClosedByBroker as exc:
            local.lead_channel = None  # closed by the refusal
            if exc.reply_code == RESOURCE_LOCKED:
                local.refused_lead[queue] = now
                return False
            # Not allowed to declare it (permissions): lead all the same, as every worker
            # did before leaders (duplicates, nothing missed).
            local.lead_denied.add(queue)
            logger.warning(
                "Cannot declare the leader queue %s (%s); this worker publishes the delayed "
                "jobs of %s and sweeps it as if it led it (so may others: duplicates, "
                "dropped by the claim)", self.topology.leader(queue), exc, queue)
            return True
        local.refused_lead.pop(queue, None)
        return True

    def _on_channel(self, use: Callable[[Any], _T]) -> _T:
        """``use(channel)`` on this thread's channel. A connection that worked before and
        fails (RabbitMQ restarted, it was closed meanwhile) is replaced once; a new one
        that fails raises its AMQP error."""
        while True:
            fresh = self._local.channel is None or self._local.pid != os.getpid()
            try:
                return use(self._channel())
            except AMQP_OUTAGES:
                self._drop()
                if fresh:
                    raise

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()


_READ_MOST = 65536  # bytes one look at a publishing connection reads


def _direct(connection: Any) -> Any:
    """The socket of pika connection ``connection`` (a ``BlockingConnection``'s
    ``_impl``) when it may be written and read directly: a plain TCP connection (not
    TLS) with nothing waiting in pika's output buffer; else None (go through pika's
    loop)."""
    transport = connection._transport
    if _PLAIN is None or type(transport) is not _PLAIN or transport.get_write_buffer_size():
        return None
    return transport._sock


def _messages(entries: Sequence[Entry]) -> Iterator[Sequence[Entry]]:
    """``entries`` in runs of at most ``PACK`` with the same queue, priority and due
    time, in order: one message each."""
    start = 0
    for i in range(1, len(entries) + 1):
        if (i == len(entries) or i - start == PACK
                or entries[i][1:] != entries[start][1:]):
            yield entries[start:i]
            start = i


@atexit.register
def _flush_all() -> None:
    """The last confirms of the thread that exits the interpreter (a script, a
    management command), for up to ``FLUSH_AT_EXIT`` seconds."""
    for publisher in list(_publishers):
        try:
            publisher.flush(timeout=FLUSH_AT_EXIT)
        except Exception:  # exiting: never mask the program's own outcome
            pass
