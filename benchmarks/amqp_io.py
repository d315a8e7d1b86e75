"""What the RabbitMQ broker's own AMQP code costs: the consumer per delivery, the
publisher per message. No database, no worker: RabbitMQ and the two classes alone.

    .venv/bin/python benchmarks/amqp_io.py [--messages N] [--rounds R] [--rabbitmq-url URL]

Each round, on a queue of its own (``amqp_io.bench``, deleted at the end):

- **publish**: N single-id messages (a due time each, as single enqueues publish them)
  by ``Publisher.send``, back to back, then ``flush`` (every confirm read): the
  process's CPU per message;
- **consume**: those N consumed by a ``Consumer`` (prefetch 256) while the main thread
  takes up to 128 at a time and acknowledges them, as a worker's broker thread does:
  the CPU per delivery of the consumer's I/O thread (from ``/proc``), and of the
  process.

Medians of R rounds and every round are printed; nothing is asserted. On a machine of
two shared cores the figures move by a third from round to round: compare code A/B in
alternating runs. See docs/performance.md (the ninth round of issue 20).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django_tasks.backends.rabbitmq.connection import Link, Publisher, Topology, connect
from django_tasks.backends.rabbitmq.consumer import Consumer

QUEUE = "bench"
TOPOLOGY = Topology("amqp_io")
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float:
    """CPU seconds of this process's thread ``native_id`` (from ``/proc``)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_round(url: str, n: int) -> tuple[float, float, float]:
    """(publish µs CPU/message, consumer I/O thread µs/delivery, process µs/delivery)."""
    publisher = Publisher(url, TOPOLOGY, Link(url))
    ids = [f"0190{i:028x}" for i in range(n)]
    base = int(time.time() * 1000)
    started = time.process_time()
    for k, job_id in enumerate(ids):
        publisher.send([(job_id, QUEUE, 0, base + k)])
    assert publisher.flush() == [], "RabbitMQ refused publishes"
    publish = (time.process_time() - started) / n * 1e6
    publisher.close()

    started = time.process_time()
    consumer = Consumer(url, TOPOLOGY, [QUEUE], prefetch=256)
    got = 0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        taken = consumer.take(128, settle=0.5)
        got += len(taken)
        consumer.ack(taken)
    io = thread_cpu(consumer._thread.native_id)  # before close: the thread ends with it
    consumer.close()
    total = time.process_time() - started
    if got < n:
        raise RuntimeError(f"consumed {got} of {n} messages")
    return publish, io / n * 1e6, total / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args(argv)
    url = args.rabbitmq_url
    conn = connect(url)
    try:
        channel = conn.channel()
        TOPOLOGY.declare(channel, QUEUE)
        channel.queue_purge(TOPOLOGY.name(QUEUE))
    finally:
        conn.close()
    runs = []
    try:
        for r in range(args.rounds):
            runs.append(one_round(url, args.messages))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{v:.1f} µs" for v in runs[-1]), flush=True)
    finally:
        conn = connect(url)
        try:
            conn.channel().queue_delete(TOPOLOGY.name(QUEUE))
        finally:
            conn.close()
    rows = [("publish: CPU per message (send, confirms read)", 0),
            ("consume: I/O thread CPU per delivery", 1),
            ("consume: process CPU per delivery (with take and ack)", 2)]
    print(f"\nRabbitMQ I/O, {args.messages:,} single-id messages, {args.rounds} round(s), "
          "medians")
    for label, i in rows:
        values = [run[i] for run in runs]
        print(f"  {label:<55} {statistics.median(values):7.1f} µs   "
              f"({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
