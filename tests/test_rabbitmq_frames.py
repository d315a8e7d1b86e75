"""The delivery and confirm readers (``rabbitmq/frames.py``) and the publisher's own
frames, against pika.

No server: the bytes are what pika marshals, the reader sits on a stand-in for pika's
connection whose frame buffer methods are pika's own, and what it hands to pika is
recorded. Whatever way the bytes are cut into reads, every delivery and confirm must come
out once, in order, by the reader or by pika, and the byte count pika's heartbeat checker
watches must be exact.
"""

from types import SimpleNamespace

import pytest

pika = pytest.importorskip("pika")

from pika import frame, spec  # noqa: E402
from pika.connection import Connection  # noqa: E402

from django_tasks.backends.rabbitmq.connection import Publisher, Topology  # noqa: E402
from django_tasks.backends.rabbitmq.frames import ConfirmReader, DeliveryReader  # noqa: E402

OURS = "ctag1.ours"
HEADERS = {"due_ms": 1_765_000_000_123, "priority": 40}


class FakeConnection:
    """What the reader uses of pika's connection; reading and trimming are pika's."""

    _read_frame = Connection._read_frame
    _trim_frame_buffer = Connection._trim_frame_buffer

    def __init__(self, events):
        self._frame_buffer = b""
        self.bytes_received = 0
        self.events = events

    def _process_frame(self, value):
        self.events.append(("pika", value))


class FakeChannel:
    """What the reader uses of pika's blocking channel."""

    channel_number = 1

    def __init__(self, connection):
        self.connection = SimpleNamespace(_impl=connection)
        self._impl = SimpleNamespace(_consumers={})

    def _dispatch_events(self):
        pass


def deliver(tag, body, *, channel=1, consumer_tag=OURS, headers=HEADERS,
            content_type="text/plain", body_frames=1):
    properties = spec.BasicProperties(content_type=content_type, headers=headers,
                                      delivery_mode=2, priority=5, timestamp=1_765_000)
    method = spec.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=tag,
                                redelivered=False, exchange="", routing_key="q")
    data = (frame.Method(channel, method).marshal()
            + frame.Header(channel, len(body), properties).marshal())
    cut = -(-len(body) // body_frames)  # body_frames frames, the last one shorter
    for at in range(0, len(body), cut or 1):
        data += frame.Body(channel, body[at:at + cut]).marshal()
    return data


def read(chunks):
    """Feed ``chunks`` to a delivery reader; the events in order: ("ours", tag, headers,
    body) from the reader, ("pika", frame) for what it handed on."""
    return feed(chunks, DeliveryReader, OURS, "ctag1.second")


def feed(chunks, reader_class, *tags):
    events = []
    conn = FakeConnection(events)
    reader = reader_class(FakeChannel(conn),
                          lambda read: events.extend(("ours", *r) for r in read))
    reader.install(*([tags] if tags else []))
    for chunk in chunks:
        conn._on_data_available(chunk)
    return conn, events


def deliveries(events):
    """(tag, body) of every delivery, whichever way it came: pika's come as a Deliver
    method frame, a header frame and body frames."""
    out, current = [], None
    for event in events:
        if event[0] == "ours":
            out.append((event[1], event[3]))
            continue
        value = event[1]
        if isinstance(value, frame.Method) and isinstance(value.method, spec.Basic.Deliver):
            current = [value.method.delivery_tag, b""]
            out.append(current)
        elif isinstance(value, frame.Body):
            current[1] += value.fragment
    return [tuple(d) for d in out]


STREAM = [
    deliver(1, b"id-one"),
    frame.Heartbeat().marshal(),
    deliver(2, b"id-two", consumer_tag="ctag1.someone-else"),
    deliver(3, b"id-three", headers=None, content_type=None),
    deliver(4, b"id-four", channel=2),
    deliver(5, b"id-5 id-6 id-7", body_frames=3),
    deliver(6, b""),
    deliver(7, b"id-eight"),
]
EXPECTED = [(1, b"id-one"), (2, b"id-two"), (3, b"id-three"), (4, b"id-four"),
            (5, b"id-5 id-6 id-7"), (6, b""), (7, b"id-eight")]


def test_whole_deliveries_of_our_consumers_are_read_and_the_rest_goes_to_pika():
    conn, events = read([b"".join(STREAM)])
    ours = [e for e in events if e[0] == "ours"]
    assert ours == [("ours", 1, HEADERS, b"id-one"), ("ours", 3, None, b"id-three"),
                    ("ours", 7, HEADERS, b"id-eight")]
    handed = [type(e[1]).__name__ for e in events if e[0] == "pika"]
    # The heartbeat, then 2 (another consumer), 4 (another channel), 5 (a body in three
    # frames) and 6 (no body frame) whole, frame by frame.
    assert handed == ["Heartbeat"] + ["Method", "Header", "Body"] * 2 + \
        ["Method", "Header", "Body", "Body", "Body"] + ["Method", "Header"]
    assert deliveries(events) == EXPECTED
    assert conn.bytes_received == len(b"".join(STREAM)) and conn._frame_buffer == b""


@pytest.mark.parametrize("kind", ["deliveries", "confirms"])
def test_every_cut_of_a_stream_yields_each_frame_once_in_order(kind):
    stream, reading, seen, expected = {
        "deliveries": (STREAM, read, deliveries, EXPECTED),
        "confirms": (CONFIRMS, read_confirms, confirms, CONFIRMED),
    }[kind]
    data = b"".join(stream)
    for cut in range(1, len(data)):
        conn, events = reading([data[:cut], data[cut:]])
        assert seen(events) == expected, cut
        assert conn.bytes_received == len(data) and conn._frame_buffer == b"", cut


def test_a_stream_read_a_byte_at_a_time():
    data = b"".join(STREAM)
    conn, events = read([data[i:i + 1] for i in range(len(data))])
    assert deliveries(events) == EXPECTED
    assert conn.bytes_received == len(data) and conn._frame_buffer == b""


def test_the_publishers_own_messages_are_read_with_their_headers():
    """The frames our publisher writes, as RabbitMQ delivers them: the same properties
    (content type, then the headers table) after a Deliver method."""
    publisher = Publisher.__new__(Publisher)
    publisher._methods = {}
    publisher.topology = Topology("t")
    published = publisher.frames(1, [("0190aaaa", "default", 40, 1_765_000_000_123)])
    header_and_body = published[published.index(b"\xce") + 1:]  # after Basic.Publish
    method = spec.Basic.Deliver(consumer_tag=OURS, delivery_tag=9, redelivered=True,
                                exchange="", routing_key="t.default")
    _, events = read([frame.Method(1, method).marshal() + header_and_body])
    assert events == [("ours", 9, HEADERS, b"0190aaaa")]


def test_headers_of_other_types_are_read_by_pika():
    """Someone else's publish (a management UI, a script) may put any type in the table."""
    headers = {"priority": -7, "due_ms": 5, "note": b"hand-made", "flag": True,
               "nested": {"a": 1}}
    _, events = read([deliver(3, b"id", headers=headers)])
    assert events == [("ours", 3, headers, b"id")]


@pytest.mark.parametrize("due", [0, 1_765_000_000_123])
@pytest.mark.parametrize("priority", [-100, 0, 40, 100])
def test_the_publishers_frames_are_what_pika_reads(due, priority):
    """The publisher packs its header frame itself: pika must read it as the properties
    pika would have written."""
    from django_tasks.backends.rabbitmq.connection import amqp_priority

    publisher = Publisher.__new__(Publisher)
    publisher._methods = {}
    publisher.topology = Topology("t")
    data = publisher.frames(3, [("id1", "default", priority, due),
                                ("id2", "default", priority, due)])
    frames, at = [], 0
    while at < len(data):
        used, value = frame.decode_frame(data[at:])
        frames.append(value)
        at += used
    method, header, body = frames
    assert isinstance(method.method, spec.Basic.Publish)
    assert (method.method.routing_key, method.method.mandatory) == ("t.default", True)
    assert (header.channel_number, body.channel_number) == (3, 3)
    assert header.body_size == len(body.fragment) and body.fragment == b"id1 id2"
    p = header.properties
    assert (p.content_type, p.headers, p.delivery_mode, p.priority, p.timestamp) == (
        "text/plain", {"due_ms": due, "priority": priority}, 2, amqp_priority(priority),
        due // 1000)


def confirm(tag, *, multiple=False, nack=False, channel=1):
    method = (spec.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=False) if nack
              else spec.Basic.Ack(delivery_tag=tag, multiple=multiple))
    return frame.Method(channel, method).marshal()


CONFIRMS = [
    confirm(1),
    confirm(3, multiple=True),
    frame.Heartbeat().marshal(),
    confirm(4, nack=True),
    confirm(5, channel=2),  # another channel's: pika's
    confirm(9, multiple=True, nack=True),
]


def read_confirms(chunks):
    return feed(chunks, ConfirmReader)


def confirms(events):
    """(channel, tag, multiple, nack) of every confirm, whichever way it came."""
    out = []
    for event in events:
        if event[0] == "ours":
            out.append((1, *event[1:]))
        elif isinstance(event[1], frame.Method):
            m = event[1].method
            out.append((event[1].channel_number, m.delivery_tag, m.multiple,
                        isinstance(m, spec.Basic.Nack)))
    return out


CONFIRMED = [(1, 1, False, False), (1, 3, True, False), (1, 4, False, True),
             (2, 5, False, False), (1, 9, True, True)]


def test_confirms_are_read_and_the_rest_goes_to_pika():
    conn, events = read_confirms([b"".join(CONFIRMS)])
    assert [e for e in events if e[0] == "ours"] == [
        ("ours", 1, False, False), ("ours", 3, True, False), ("ours", 4, False, True),
        ("ours", 9, True, True)]
    assert [type(e[1]).__name__ for e in events if e[0] == "pika"] == ["Heartbeat", "Method"]
    assert confirms(events) == CONFIRMED
    assert conn.bytes_received == len(b"".join(CONFIRMS)) and conn._frame_buffer == b""
