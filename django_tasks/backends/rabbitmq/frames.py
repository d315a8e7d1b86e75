"""Reading a consumer's deliveries straight from the bytes RabbitMQ sends.

A delivery is three AMQP frames: the ``Basic.Deliver`` method, the content header
(the message's properties) and the body. pika turns each frame into objects, passes
them through its connection, its channel's content assembler and the blocking
channel's queue of pending events before the consumer's callback sees them: about as
much of a worker's CPU per job as the claim of the job itself (see
docs/performance.md). The consumer reads only a delivery's tag, its two ``headers``
(``priority``, ``due_ms``) and its body, so :class:`DeliveryReader` reads those from
the connection's input, in place, and hands everything else (replies, heartbeats,
cancellations, a delivery it does not recognise) to pika, frame by frame, as before.

It takes the place of the pika connection's ``_on_data_available`` (the method its
transport calls with the bytes it read), on the consumer's connection only, and keeps
what pika keeps there: the unread bytes in ``_frame_buffer`` and the count of bytes
read in ``bytes_received``, which pika's heartbeat checker watches.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any

from pika import data as amqp_data
from pika import spec

__all__ = ["Arrival", "DeliveryReader", "read_headers", "read_table"]

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_DELIVER = struct.Struct(">HH")  # class and method ids
_TAG = struct.Struct(">QB")  # delivery tag, redelivered
_HEADER = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_FRAME_END = spec.FRAME_END
_METHOD, _CONTENT_HEADER, _BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_BASIC, _DELIVER_ID = spec.Basic.INDEX, spec.Basic.Deliver.INDEX & 0xFFFF
# Property flags of Basic's content header, in the order the properties follow it.
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS = 1 << 15, 1 << 14, 1 << 13
_MORE_FLAGS = 1  # a second word of flags follows (never for Basic: 14 properties)

#: One delivery as the reader hands it on: (delivery tag, ``headers`` or None, body).
Arrival = tuple[int, "dict[str, Any] | None", bytes]


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


class DeliveryReader:
    """Hands the deliveries of a blocking ``channel``'s consumers to ``on_arrivals``, in
    the order RabbitMQ sent them, those of each read together (one call).

    Whole deliveries are read from the connection's input here; every other frame goes
    to pika, after the deliveries before it, and a delivery pika assembles (one split
    across reads, a body in several frames) comes back through :meth:`delivered` at
    once, not through the blocking channel's queue of events, which would hand it on
    after deliveries that came later (a consumer's acks with ``multiple`` rely on the
    order). Pass :meth:`delivered` to ``basic_consume``, then :meth:`install` the
    reader with the consumer tags."""

    def __init__(self, channel: Any, on_arrivals: Callable[[list[Arrival]], None]) -> None:
        self.channel = channel
        self.impl = channel.connection._impl
        self.number = channel.channel_number
        self.tags: set[bytes] = set()
        self.on_arrivals = on_arrivals

    def delivered(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """pika's consumer callback: a delivery it decoded itself."""
        self.on_arrivals([(method.delivery_tag, properties.headers, body)])

    def install(self, consumer_tags: Collection[str]) -> None:
        """Read the deliveries of ``consumer_tags`` from now on; any that pika queued
        while they were set up are handed on first."""
        consumers = self.channel._impl._consumers
        for tag in consumer_tags:
            consumers[tag] = self.delivered  # not the blocking channel's queue
            self.tags.add(tag.encode())
        # An instance attribute: pika's transport calls ``conn._on_data_available``.
        self.impl._on_data_available = self.data_available
        self.channel._dispatch_events()

    def data_available(self, data_in: bytes) -> None:
        impl = self.impl
        buf = impl._frame_buffer + data_in if impl._frame_buffer else data_in
        at = 0
        end = len(buf)
        arrivals: list[Arrival] = []
        while at < end:
            taken = self._delivery(buf, at, end, arrivals)
            if taken:
                at = taken
                continue
            if arrivals:
                arrivals, handed = [], arrivals
                self.on_arrivals(handed)
            # Not a whole delivery of ours: one frame through pika, as it would.
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
        if arrivals:
            self.on_arrivals(arrivals)

    def _delivery(self, buf: bytes, at: int, end: int, arrivals: list[Arrival]) -> int:
        """The offset after the delivery that starts at ``at``, added to ``arrivals``, or
        0 if none of ours does (another frame, a delivery not yet wholly read, a body in
        several frames)."""
        number = self.number
        if end - at < 7:
            return 0
        kind, channel, size = _FRAME.unpack_from(buf, at)
        if kind != _METHOD or channel != number or size < 4:
            return 0
        method_end = at + 7 + size
        if method_end >= end or buf[method_end] != _FRAME_END:
            return 0
        if _DELIVER.unpack_from(buf, at + 7) != (_BASIC, _DELIVER_ID):
            return 0
        p = at + 11
        tag_end = p + 1 + buf[p]
        if buf[p + 1:tag_end] not in self.tags:  # cancelled, or not ours: pika decides
            return 0
        delivery_tag, _ = _TAG.unpack_from(buf, tag_end)
        # The header frame.
        h = method_end + 1
        if end - h < 7:
            return 0
        kind, channel, size = _FRAME.unpack_from(buf, h)
        header_end = h + 7 + size
        if kind != _CONTENT_HEADER or channel != number or header_end >= end \
                or buf[header_end] != _FRAME_END:
            return 0
        class_id, _, body_size, flags = _HEADER.unpack_from(buf, h + 7)
        if class_id != _BASIC or flags & _MORE_FLAGS or body_size == 0:
            return 0
        # The body, in one frame.
        b = header_end + 1
        if end - b < 7:
            return 0
        kind, channel, size = _FRAME.unpack_from(buf, b)
        body_end = b + 7 + size
        if kind != _BODY or channel != number or size != body_size \
                or body_end >= end or buf[body_end] != _FRAME_END:
            return 0
        headers = read_headers(buf, h + 7 + _HEADER.size, flags)
        arrivals.append((delivery_tag, headers, buf[b + 7:body_end]))
        return body_end + 1
