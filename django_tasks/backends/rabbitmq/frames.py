"""Reading what RabbitMQ sends most, deliveries and confirms, straight from its bytes.

A delivery is three AMQP frames: the ``Basic.Deliver`` method, the content header
(the message's properties) and the body; a publisher confirm is one ``Basic.Ack`` (or
``Basic.Nack``) method frame. pika turns each frame into objects and passes them
through its connection, its channel (a content assembler for deliveries) and, for a
blocking channel's consumer, a queue of pending events before the callback sees them:
15-20 us of the consumer's I/O thread per delivery, ~18 us of the producer's per
confirm (7-8 and ~2 us read here; benchmarks/amqp_io.py, docs/performance.md). The
readers here read what
the broker uses of those frames (a delivery's tag, its two ``headers``, ``priority``
and ``due_ms``, and its body; a confirm's tag and flags) in place, and hand every
other frame (replies, heartbeats, cancellations, a delivery split across two reads)
to pika, frame by frame, in order.

What the publisher writes is packed here too (:func:`content`): the header layout the
delivery reader expects is written in one place.

A reader takes the place of the pika connection's ``_on_data_available`` (the method
its transport calls with the bytes it read), on its own connection only, and keeps
what pika keeps there: the unread bytes in ``_frame_buffer`` and the count of bytes
read in ``bytes_received``, which pika's heartbeat checker watches.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any

from pika import data as amqp_data
from pika import spec

__all__ = ["Arrival", "Confirm", "ConfirmReader", "DeliveryReader", "content",
           "read_headers", "read_table"]

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_ID = struct.Struct(">HH")  # class and method ids
_TAG = struct.Struct(">QB")  # delivery tag, then redelivered (Deliver) or flags (Ack, Nack)
_HEADER = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_FRAME_END = spec.FRAME_END
_METHOD, _CONTENT_HEADER, _BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_BASIC = spec.Basic.INDEX
_DELIVER = (_BASIC, spec.Basic.Deliver.INDEX & 0xFFFF)
_ACK, _NACK = (_BASIC, spec.Basic.Ack.INDEX & 0xFFFF), (_BASIC, spec.Basic.Nack.INDEX & 0xFFFF)
# Property flags of Basic's content header, in the order the properties follow it.
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS = 1 << 15, 1 << 14, 1 << 13
_MORE_FLAGS = 1  # a second word of flags follows (never for Basic: 14 properties)

# A message's content header as the publisher writes it: as pika.BasicProperties(
# content_type="text/plain", headers={"due_ms": due, "priority": priority},
# delivery_mode=2, priority=<0-9>, timestamp=due // 1000) marshals it, except that
# ``due_ms`` is always a signed 64-bit integer ("l"; pika writes "I" when it fits 32 bits).
_FLAGS = _CONTENT_TYPE | _HEADERS | 1 << 12 | 1 << 11 | 1 << 6  # + mode, priority, timestamp
_DUE_MS = b"\x06due_ms" + b"l"  # a table entry: its key (a short string), its type
_PRIORITY = b"\x08priority" + b"I"
_TABLE = len(_DUE_MS) + 8 + len(_PRIORITY) + 4
_BEFORE_DUE = b"\x0atext/plain" + struct.pack(">I", _TABLE) + _DUE_MS
_DUE = struct.Struct(">q")
_AFTER_DUE = struct.Struct(f">{len(_PRIORITY)}siBBQ")  # priority; mode, AMQP priority, timestamp
_HEADER_SIZE = _HEADER.size + len(_BEFORE_DUE) + _DUE.size + _AFTER_DUE.size
_END = bytes([_FRAME_END])


def content(channel_number: int, body: bytes, priority: int, amqp_priority: int,
            due: int) -> bytes:
    """The header and body frames of a persistent message of ours: ``priority`` (ours,
    -100..100) and ``due`` (ms) in its headers, ``amqp_priority`` (0-9) for RabbitMQ.
    pika's properties object and its encoder cost ~10 us a message."""
    size = len(body)
    return b"".join((
        _FRAME.pack(_CONTENT_HEADER, channel_number, _HEADER_SIZE),
        _HEADER.pack(_BASIC, 0, size, _FLAGS), _BEFORE_DUE, _DUE.pack(due),
        _AFTER_DUE.pack(_PRIORITY, priority, 2, amqp_priority, due // 1000), _END,
        _FRAME.pack(_BODY, channel_number, size), body, _END,
    ))


#: One delivery as the reader hands it on: (delivery tag, ``headers`` or None, body).
Arrival = tuple[int, "dict[str, Any] | None", bytes]
#: One publisher confirm: (delivery tag, multiple, nack).
Confirm = tuple[int, bool, bool]


def read_headers(buf: bytes, at: int, flags: int) -> dict[str, Any] | None:
    """The ``headers`` table of a Basic content header whose properties start at ``at``
    with these ``flags`` (None without one): the two short strings that may come before
    it are skipped."""
    if not flags & _HEADERS:
        return None
    if flags & _CONTENT_TYPE:
        at += 1 + buf[at]
    if flags & _CONTENT_ENCODING:
        at += 1 + buf[at]
    return read_table(buf, at)


_SIGNED = {ord("l"): struct.Struct(">q"), ord("I"): struct.Struct(">i")}
_SIZE = struct.Struct(">I")


def read_table(buf: bytes, at: int) -> dict[str, Any]:
    """The AMQP field table at ``at``: read here when it holds only integers as pika
    encodes them (``I``, ``l``: our ``priority`` and ``due_ms``), else by pika."""
    (size,) = _SIZE.unpack_from(buf, at)
    p, limit = at + 4, at + 4 + size
    table: dict[str, Any] = {}
    while p < limit:
        key_end = p + 1 + buf[p]
        number = _SIGNED.get(buf[key_end])
        if number is None:
            return amqp_data.decode_table(buf, at)[0]
        table[buf[p + 1:key_end].decode()] = number.unpack_from(buf, key_end + 1)[0]
        p = key_end + 1 + number.size
    return table


class _Reader:
    """Reads the frames :meth:`_read` recognises on ``channel``'s connection and hands
    them to ``handle``, those of each read together (one call); every other frame goes
    to pika, after those before it."""

    def __init__(self, channel: Any, handle: Callable[[list[Any]], None]) -> None:
        self.channel = channel
        self.impl = channel.connection._impl
        self.number = channel.channel_number
        self.handle = handle

    def install(self) -> None:
        # An instance attribute: pika's transport calls ``conn._on_data_available``.
        self.impl._on_data_available = self.data_available

    def data_available(self, data_in: bytes) -> None:
        impl = self.impl
        buf = impl._frame_buffer + data_in if impl._frame_buffer else data_in
        at = 0
        end = len(buf)
        read: list[Any] = []
        while at < end:
            taken = self._read(buf, at, end, read)
            if taken:
                at = taken
                continue
            if read:
                read, handed = [], read
                self.handle(handed)
            # Not a whole frame of ours: one frame through pika, as it would.
            impl._frame_buffer = buf[at:] if at else buf
            impl.bytes_received += at
            buf, at = b"", 0
            consumed, frame = impl._read_frame()
            if frame is None:
                return
            impl._trim_frame_buffer(consumed)
            impl._process_frame(frame)
            if impl._frame_buffer is None:  # the connection was torn down meanwhile
                return
            buf, end = impl._frame_buffer, len(impl._frame_buffer)
        impl._frame_buffer = b""
        impl.bytes_received += at
        if read:
            self.handle(read)

    def _whole(self, buf: bytes, at: int, end: int, kind: int, least: int) -> int:
        """The offset of the end marker of a whole frame of ``kind`` on this channel at
        ``at`` with a payload of at least ``least`` bytes; 0 if there is none."""
        if end - at < 7:
            return 0
        found, channel, size = _FRAME.unpack_from(buf, at)
        frame_end = at + 7 + size
        if found != kind or channel != self.number or size < least or frame_end >= end \
                or buf[frame_end] != _FRAME_END:
            return 0
        return frame_end

    def _method(self, buf: bytes, at: int, end: int) -> tuple[int, int, int]:
        """(class id, method id, end of the frame) of a whole method frame of this
        channel at ``at``; class id 0 if there is none."""
        frame_end = self._whole(buf, at, end, _METHOD, _METHOD_ID.size)
        if not frame_end:
            return 0, 0, 0
        class_id, method_id = _METHOD_ID.unpack_from(buf, at + 7)
        return class_id, method_id, frame_end

    def _read(self, buf: bytes, at: int, end: int, read: list[Any]) -> int:
        """The offset after what starts at ``at``, added to ``read``; 0 if not ours."""
        raise NotImplementedError


class ConfirmReader(_Reader):
    """Hands a publishing channel's confirms (``Basic.Ack``, ``Basic.Nack``) to
    ``on_confirms`` as :data:`Confirm` tuples, in order."""

    def _read(self, buf: bytes, at: int, end: int, read: list[Confirm]) -> int:
        class_id, method_id, frame_end = self._method(buf, at, end)
        if not class_id or frame_end - at < 7 + 4 + 9:
            return 0
        ids = (class_id, method_id)
        if ids != _ACK and ids != _NACK:
            return 0
        tag, flags = _TAG.unpack_from(buf, at + 11)
        read.append((tag, bool(flags & 1), ids == _NACK))
        return frame_end + 1


class DeliveryReader(_Reader):
    """Hands the deliveries of a blocking ``channel``'s consumers to ``on_arrivals`` as
    :data:`Arrival` tuples, in the order RabbitMQ sent them.

    A delivery pika assembles (one split across reads, a body in several frames)
    comes back through :meth:`delivered` at once, not through the blocking channel's
    queue of events, which would hand it on after deliveries that came later (a
    consumer's acks with ``multiple`` rely on the order). Pass :meth:`delivered` to
    ``basic_consume``, then :meth:`install` the reader with the consumer tags."""

    def __init__(self, channel: Any, on_arrivals: Callable[[list[Arrival]], None]) -> None:
        super().__init__(channel, on_arrivals)
        self.tags: set[bytes] = set()

    def delivered(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """pika's consumer callback: a delivery it decoded itself."""
        self.handle([(method.delivery_tag, properties.headers, body)])

    def install(self, consumer_tags: Collection[str] = ()) -> None:
        """Read the deliveries of ``consumer_tags`` from now on; any that pika queued
        while they were set up are handed on first."""
        consumers = self.channel._impl._consumers
        for tag in consumer_tags:
            consumers[tag] = self.delivered  # not the blocking channel's queue
            self.tags.add(tag.encode())
        super().install()
        self.channel._dispatch_events()

    def _read(self, buf: bytes, at: int, end: int, read: list[Arrival]) -> int:
        """A whole delivery of ours (its three frames) at ``at``, or 0 (another frame, a
        delivery not yet wholly read, a body in several frames)."""
        class_id, method_id, method_end = self._method(buf, at, end)
        if (class_id, method_id) != _DELIVER:
            return 0
        p = at + 11
        tag_end = p + 1 + buf[p]
        if buf[p + 1:tag_end] not in self.tags:  # cancelled, or not ours: pika decides
            return 0
        delivery_tag, _ = _TAG.unpack_from(buf, tag_end)
        # The header frame.
        h = method_end + 1
        header_end = self._whole(buf, h, end, _CONTENT_HEADER, _HEADER.size)
        if not header_end:
            return 0
        class_id, _, body_size, flags = _HEADER.unpack_from(buf, h + 7)
        if class_id != _BASIC or flags & _MORE_FLAGS or body_size == 0:
            return 0
        # The body, in one frame.
        b = header_end + 1
        body_end = self._whole(buf, b, end, _BODY, body_size)
        if not body_end or body_end - b - 7 != body_size:
            return 0
        headers = read_headers(buf, h + 7 + _HEADER.size, flags)
        read.append((delivery_tag, headers, buf[b + 7:body_end]))
        return body_end + 1
