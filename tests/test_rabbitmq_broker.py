"""What only the RabbitMQ broker has to prove: publishes after commit (confirms read
later, unconfirmed ones sent again on a new connection), bulk messages of several ids, an
unreachable RabbitMQ at enqueue, delays kept in the rows, acks after the claim, the
per-consumer prefetch, a restart under load. The contract it shares with the other
brokers is in test_broker_contract.py, and the kill -9 scenario and the workflows run
with it there (the ``broker`` fixture, ``rabbitmq_too``).

The restart test stops and starts the RabbitMQ application on this machine with
``rabbitmqctl`` (it is skipped where there is none): the tests' queues live in a vhost
of their own, but the restart is the whole node's.
"""

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta
from io import StringIO
from urllib.parse import unquote, urlsplit

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.tasks import task_backends
from django.utils import timezone

from django_tasks.backends.rabbitmq.connection import READ_AT, Link, Publisher, connect
from django_tasks.backends.rabbitmq.consumer import Consumer
from django_tasks.models import Job
from tests import reliability_tasks as rt
from tests import tasks
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq]


@pytest.fixture(autouse=True)
def _rabbitmq(rabbitmq_default):
    """Every test here runs with the RabbitMQ broker as the default backend."""


def broker():
    return task_backends["default"].broker


def messages(queue="default"):
    return broker().queue_counts([queue])[queue][0]


def purge(queue="default"):
    """Empty the queue in RabbitMQ (it lost its messages); the rows stay."""
    conn = connect(broker().url)
    try:
        conn.channel().queue_purge(broker().topology.name(queue))
    finally:
        conn.close()


def runs(path):
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def counted(queue="default"):
    """The queue's messages as RabbitMQ counts them, on a connection of its own: the
    publisher's connection is left alone (using it would process its I/O)."""
    conn = connect(broker().url)
    try:
        return conn.channel().queue_declare(broker().topology.name(queue),
                                            passive=True).method.message_count
    finally:
        conn.close()


def test_a_job_is_published_when_its_transaction_commits_never_on_rollback():
    with transaction.atomic():
        tasks.add.enqueue(1, 1)
        assert messages() == 0  # not before the commit
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(2, 2)
        raise RuntimeError("roll back")
    broker().flush()  # its confirm
    assert messages() == 1


def test_an_enqueue_returns_once_its_publish_is_written_and_an_idle_producer_sends_it():
    """enqueue() does not wait for the confirm, but leaves nothing in a buffer: a
    producer that enqueues once and then idles has sent the message."""
    tasks.add.enqueue(1, 1)
    local = broker().publisher._local
    assert len(local.pending) <= 1  # its confirm may be read later
    assert wait_for(lambda: counted() == 1, timeout=5)  # nothing more done here
    broker().flush()
    assert not local.pending


def _drop_next_write(monkeypatch):
    """The next publish is lost on its way (its frames never reach the socket) and
    stays unconfirmed, as in a connection that dies under it."""
    publisher = broker().publisher

    def dropped(channel, data):
        monkeypatch.undo()

    monkeypatch.setattr(publisher, "_emit", dropped)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_publishes_a_killed_connection_left_unconfirmed_are_sent_again_on_a_new_one(
        monkeypatch):
    first = tasks.add.enqueue(1, 1)
    b = broker()
    b.flush()
    _drop_next_write(monkeypatch)
    lost = tasks.add.enqueue(2, 2)  # RabbitMQ never got it; unconfirmed
    assert [e[0] for e in b.publisher._local.unconfirmed()] == [lost.id]
    vhost = unquote(urlsplit(b.url).path[1:])  # closed by the server, for real
    _rabbitmqctl("close_all_connections", "-p", vhost, "test: a connection killed")
    third = tasks.add.enqueue(3, 3)  # finds the connection dead: a new one, resending
    assert b.publisher.flush() == []  # confirmed: RabbitMQ holds them
    got = b.claim("w", "L", ["default"], 10)
    assert sorted(m.id for m in got) == sorted([first.id, lost.id, third.id])


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
@pytest.mark.parametrize("sent", [3, 40])  # confirms read at the flush; also as sent
def test_publishes_rabbitmq_refuses_are_reported_by_their_confirms(caplog, sent):
    """A queue that is full (a max-length policy rejecting publishes) nacks them: their
    ids are logged, for the sweep, whichever way their confirms are read (by a publish
    that finds ``READ_AT`` unconfirmed, which logs those it read, or by the flush, which
    also returns them)."""
    b = broker()
    vhost = unquote(urlsplit(b.url).path[1:])
    queue = b.topology.name("default")
    b.publisher.counts(["default"])  # declared before the policy
    _rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "test-full",
                 f"^{queue}$", '{"max-length": 1, "overflow": "reject-publish"}')
    try:
        # The policy applies within moments: the queue is full once a probe is refused
        # (the first may fill it).
        assert wait_for(lambda: b.publisher.publish([("probe", "default", 0, 0)]) == ["probe"],
                        timeout=10)
        ids = [f"0190{i:028x}" for i in range(sent)]
        caplog.clear()
        with caplog.at_level("WARNING", logger="django_tasks.worker"):
            for k, job_id in enumerate(ids):  # one a message: a due time each
                b.publisher.send([(job_id, "default", 0, k + 1)])
            returned = b.publisher.flush()
    finally:
        _rabbitmqctl("clear_policy", "-p", vhost, "test-full")
    logged = [i for r in caplog.records if r.getMessage().startswith("RabbitMQ refused")
              for i in r.args[1].split(", ")]
    assert sorted(logged) == ids
    if sent < READ_AT:  # no publish read confirms: the flush read them all
        assert sorted(returned) == ids
    else:
        assert set(returned) <= set(ids)


def test_a_publish_lost_with_its_connection_in_an_idle_producer_is_left_to_the_sweep(
        monkeypatch):
    """No later publish to send it again: the rows are the truth, and a worker's sweep
    publishes the job."""
    b = broker()
    tasks.add.enqueue(0, 0)
    b.flush()
    assert b.claim("w", "L", ["default"], 10)  # the queue is empty again
    _drop_next_write(monkeypatch)
    lost = tasks.add.enqueue(1, 1)
    b.publisher._drop()  # the producer's connection is gone; the producer idles
    assert counted() == 0
    assert b.sweep(["default"]) == 0  # empty once: publishes may be in flight
    assert b.sweep(["default"]) == 1
    [m] = b.claim("w", "L", ["default"], 10)
    assert m.id == lost.id


def test_unconfirmed_publishes_are_bounded_by_a_window(monkeypatch):
    from django_tasks.backends.rabbitmq import connection as amqp_connection

    monkeypatch.setattr(amqp_connection, "WINDOW", 4)
    b = broker()
    seen = []
    original = amqp_connection.Publisher._write

    def write(self, channel, entries):
        data = original(self, channel, entries)
        seen.append(len(self._local.pending))
        return data

    monkeypatch.setattr(amqp_connection.Publisher, "_write", write)
    with transaction.atomic():
        for i in range(30):
            tasks.add.enqueue(i, i)
    assert len(seen) == 30 and max(seen) <= 5, seen  # at 4 unconfirmed, a send waits
    b.flush()
    assert messages() == 30


def claim_all(b, expected):
    """Claim until ``expected`` jobs came, for 10 s at most: a claim outside a worker
    takes what arrived until none has for 50 ms (``SETTLE / 4``), and on a loaded
    machine a later message (a redelivery, the next packed one) can come after that."""
    got = []
    deadline = time.monotonic() + 10
    while len(got) < expected and time.monotonic() < deadline:
        got += b.claim("w", "L", ["default"], 100)
    return got


def test_a_bulk_enqueue_packs_25_ids_a_message_acked_once_every_id_is_claimed():
    results = tasks.add.enqueue_many([(i, i) for i in range(60)])
    ids = [r.id for r in results]
    b = broker()
    assert messages() == 3  # 25 + 25 + 10 ids: enqueue_many waited for their confirms
    got = b.claim("w", "L", ["default"], 4)
    assert [m.id for m in got] == ids[:4]  # one message's ids, in order
    b.close()  # a crash: its message had ids unclaimed, so it was not acknowledged
    assert wait_for(lambda: messages() == 3, timeout=5)
    # Delivered again whole: the four claimed ones are dropped by the claim.
    got = claim_all(b, 56)
    assert sorted(m.id for m in got) == sorted(ids[4:])
    b.close()  # every id of every message settled: all acknowledged
    assert wait_for(lambda: messages() == 0, timeout=5)


def test_a_held_message_of_several_ids_goes_back_whole_and_its_untaken_ids_are_claimed_later():
    results = tasks.add.enqueue_many([(i, i) for i in range(10)])
    ids = [r.id for r in results]
    b = broker()
    got = b.claim("w", "L", ["default"], 3)
    assert [m.id for m in got] == ids[:3]
    consumer, _ = b._consumer(["default"])
    assert consumer.held() == 7
    assert consumer.release_held(0) == 7  # held too long: back to the queue
    assert consumer.held() == 0
    got = claim_all(b, 7)  # redelivered: the claimed three dropped
    assert sorted(m.id for m in got) == sorted(ids[3:])
    b.close()
    assert wait_for(lambda: messages() == 0, timeout=5)


def test_single_id_and_packed_messages_are_read_alike():
    single = [tasks.add.enqueue(i, i).id for i in range(3)]
    packed = [r.id for r in tasks.add.enqueue_many([(i, i) for i in range(30)])]
    broker().flush()
    assert messages() == 3 + 2
    got = claim_all(broker(), len(single + packed))
    assert sorted(m.id for m in got) == sorted(single + packed)


def test_an_unreachable_rabbitmq_at_enqueue_keeps_the_job_and_a_sweep_publishes_it(caplog):
    b = broker()
    bad = "amqp://guest:guest@127.0.0.1:1/%2F"
    b._publisher = Publisher(bad, b.topology, Link(bad))
    first = tasks.add.enqueue(1, 1)  # does not raise
    second = tasks.add.enqueue(2, 2)
    assert Job.objects.filter(pk__in=[first.id, second.id], status="READY").count() == 2
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]  # once per outage
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:1/%2F unreachable" in down[0].getMessage()
    b._publisher = None  # RabbitMQ is back
    assert messages() == 0
    assert b.sweep(["default"]) == 0  # an empty queue once: publishes may be in flight
    assert b.sweep(["default"]) == 2  # twice: they were lost
    got = b.claim("w", "L", ["default"], 10)
    assert sorted(m.id for m in got) == sorted([first.id, second.id])


def test_messages_the_server_lost_are_republished_from_the_rows():
    jobs = [tasks.add.enqueue(i, i) for i in range(3)]
    b = broker()
    b.flush()
    assert messages() == 3
    purge()
    assert b.sweep(["default"]) == 0  # empty once: publishes may be in flight
    assert b.sweep(["default"]) == 3
    got = b.claim("w", "L", ["default"], 10)
    assert sorted(m.id for m in got) == sorted(j.id for j in jobs)


def test_a_lost_backlog_is_republished_in_batches_that_double_while_each_is_drained(
        monkeypatch):
    """RabbitMQ lost a backlog bigger than a sweep's batch: each sweep that finds the queue
    empty again publishes twice the last batch, at once (up to SWEEP_MOST); a sweep that
    finds the batch still queued publishes nothing; once RabbitMQ holds as many as wait,
    the next loss starts again at HEAD, after a second look."""
    from django_tasks.backends.rabbitmq import broker as module

    monkeypatch.setattr(module, "HEAD", 2)
    monkeypatch.setattr(module, "SWEEP_MOST", 8)
    b = broker()
    jobs = [tasks.add.enqueue(i, i) for i in range(30)]
    b.flush()
    purge()  # RabbitMQ lost them
    sweeps = []
    for _ in range(5):
        sweeps.append(b.sweep(["default"]))
        purge()  # the batch drained (no claim: the rows stay READY)
    assert sweeps == [0, 2, 4, 8, 8]
    assert b.sweep(["default"]) == 8
    assert b.sweep(["default"]) == 0  # the batch is still queued: nothing more
    purge()
    assert b.sweep(["default"]) == 8  # drained: at once, no second look
    # RabbitMQ holds as many as wait (the backlog, published by a bulk enqueue's path):
    b._publish_rows([(j.id, "default", 0, j.enqueued_at) for j in jobs])
    assert b.sweep(["default"]) == 0
    purge()
    assert b.sweep(["default"]) == 0  # a new loss: first a second look
    assert b.sweep(["default"]) == 2  # then HEAD


@pytest.mark.slow
def test_burst_stops_only_when_no_ready_row_is_left_whatever_rabbitmq_holds(tmp_path):
    """Jobs committed while RabbitMQ refused their publishes: a burst worker finds the
    queue empty but the rows READY, and waits for its sweep to publish them."""
    b = broker()
    bad = "amqp://guest:guest@127.0.0.1:1/%2F"
    b._publisher = Publisher(bad, b.topology, Link(bad))
    log = tmp_path / "runs"
    ids = {rt.record.enqueue(str(log)).id for _ in range(20)}
    b._publisher = None
    assert messages() == 0
    proc = start_worker("--burst", "--loglevel", "WARNING")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert set(runs(log)) == ids
    assert Job.objects.filter(pk__in=ids, status="SUCCESSFUL").count() == 20


def test_a_delayed_job_waits_in_the_table_and_is_published_when_due():
    later = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
    b = broker()
    assert b.publish_due(["default"]) == 0 and messages() == 0
    assert b.publish_due(["default"], now=timezone.now() + timedelta(minutes=6)) == 1
    assert messages() == 1
    [m] = b.claim("w", "L", ["default"], 10, now=timezone.now() + timedelta(minutes=6))
    assert m.id == later.id


def test_one_worker_a_queue_publishes_its_delayed_jobs_and_sweeps_it(monkeypatch):
    """Several workers serving a queue: the one holding its leader queue (exclusive, on
    its publishing connection) publishes the queue's due jobs and sweeps it; the others
    do neither, so a due job is published once, not once per worker. When the leader's
    connection closes, another takes the lead (at its first look LEAD_RETRY after it was
    refused), and its first pass publishes every due job. After a reconnect or a rescue
    (a forced sweep) every worker sweeps."""
    from django_tasks.backends.rabbitmq import connection as module

    job = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
    later = timezone.now() + timedelta(minutes=6)
    first = broker()
    second = task_backends.create_connection("default").broker  # another worker's
    try:
        assert first.publish_due(["default"], now=later) == 1
        assert second.publish_due(["default"], now=later) == 0  # first leads
        assert messages() == 1
        purge()
        assert [second.sweep(["default"], now=later) for _ in range(3)] == [0, 0, 0]
        assert [first.sweep(["default"], now=later) for _ in range(2)] == [0, 1]
        first.publisher.close()  # the leader stopped
        assert second.publish_due(["default"], now=later) == 0  # refused < LEAD_RETRY ago
        monkeypatch.setattr(module, "LEAD_RETRY", 0.0)
        # All due, its first pass (once RabbitMQ has deleted the closed connection's
        # exclusive queue, which may follow the close by a moment).
        assert wait_for(lambda: second.publish_due(["default"], now=later) == 1, timeout=5)
        assert first.publish_due(["default"], now=later) == 0
        purge()
        first._reconnected()  # its consumer came back from an outage: it sweeps at once
        assert first.sweep(["default"], now=later) == 1
        [m] = second.claim("w", "L", ["default"], 10, now=later)
        assert m.id == job.id
    finally:
        second.close()


def test_a_leader_queue_rabbitmq_refuses_to_declare_leaves_the_worker_leading(
        monkeypatch, caplog):
    """Not allowed to declare the leader queue (here a name RabbitMQ reserves, refused
    with ACCESS_REFUSED; for a user, a permission): the worker publishes its queue's
    due jobs as if it led it, as every worker did before leaders, and says so once."""
    from django_tasks.backends.rabbitmq.connection import Topology

    monkeypatch.setattr(Topology, "leader", lambda self, queue: f"amq.test.{queue}")
    later = timezone.now() + timedelta(minutes=6)
    job = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
    b = broker()
    assert b.publish_due(["default"], now=later) == 1
    b.publish_due(["default"], now=later)
    warned = [r.getMessage() for r in caplog.records
              if "Cannot declare the leader queue" in r.getMessage()]
    assert len(warned) == 1 and "ACCESS_REFUSED" in warned[0], warned
    [m] = b.claim("w", "L", ["default"], 10, now=later)
    assert m.id == job.id


def test_a_message_for_a_job_that_is_not_ready_is_acknowledged_and_dropped():
    done = tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=done.id).update(status="SUCCESSFUL")
    b = broker()
    assert b.claim("w", "L", ["default"], 10) == []
    b.close()  # anything unacknowledged would go back to the queue now
    assert wait_for(lambda: messages() == 0, timeout=5)
    assert Job.objects.get(pk=done.id).status == "SUCCESSFUL"


def test_a_delivery_is_acknowledged_only_once_its_claim_is_committed(monkeypatch):
    from django.db import OperationalError

    job = tasks.add.enqueue(1, 1)
    b = broker()

    def claim_fails(*args, **kwargs):
        raise OperationalError("the database went away mid-claim")

    monkeypatch.setattr(b.store, "claim", claim_fails)
    with pytest.raises(OperationalError):
        b.claim("w", "L", ["default"], 10)
    b.close()  # not acknowledged: RabbitMQ requeues it
    assert wait_for(lambda: messages() == 1, timeout=5)
    monkeypatch.undo()
    [m] = b.claim("w", "L", ["default"], 10)
    assert m.id == job.id
    b.close()  # acknowledged with the claim's commit: nothing comes back
    assert wait_for(lambda: messages() == 0, timeout=5)


def idle_claim(b, job_id):
    """An idle worker's round trip: nothing to write, the claim alone (no disk wait)."""
    done = b.exchange("w", lease="L1", queues=["default"], limit=10)
    assert [m.id for m in done.claimed] == [job_id]
    return done.claimed[0]


def unacked(b):
    [consumer] = b._consumers.values()
    with consumer._cond:
        return [tag for tag, settled in consumer._unacked.items() if not settled]


def test_an_idle_claims_delivery_is_acknowledged_once_a_later_commit_waited_for_the_disk():
    from django_tasks.jobs.messages import Start

    job = tasks.add.enqueue(1, 1)
    b = broker()
    b.flush()
    message = idle_claim(b, job.id)
    assert len(unacked(b)) == 1  # its claim may not be on disk yet
    # The start's round trip waits for the disk: the WAL up to the claim is written too.
    b.exchange("w", lease="L1", starts=[Start(message.id, message.lease,
                                              timezone.now().isoformat())])
    assert unacked(b) == []
    b.close()


def test_an_idle_claims_delivery_is_not_acknowledged_if_the_connection_goes():
    job = tasks.add.enqueue(1, 1)
    b = broker()
    b.flush()
    idle_claim(b, job.id)
    b.close()  # never acknowledged: RabbitMQ requeues it
    assert wait_for(lambda: messages() == 1, timeout=5)


def test_after_a_failed_round_trip_an_idle_claims_messages_go_back(monkeypatch):
    """The database may have crashed and lost a claim that did not wait for the disk:
    its message is returned to the queue, and claimed again if the row is READY."""
    from django.db import OperationalError

    from django_tasks.jobs.messages import Outcome

    job = tasks.add.enqueue(1, 1)
    b = broker()
    b.flush()
    idle_claim(b, job.id)
    Job.objects.filter(pk=job.id).update(status="READY", worker_id="", lease="")  # lost

    def fails(*args, **kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(b.store, "exchange", fails)
    with pytest.raises(OperationalError):
        b.exchange("w", lease="L1", outcomes=[Outcome("other", "L1", "SUCCESSFUL")])
    monkeypatch.undo()
    assert unacked(b) == []  # given back, not acknowledged
    again = claim_all(b, 1)
    assert [m.id for m in again] == [job.id]
    b.close()


def test_acks_cover_only_settled_deliveries_one_ack_for_a_settled_run(monkeypatch):
    """A claim taking a later delivery before an earlier one (an earlier due time)
    acknowledges it alone: an ack ``multiple`` would acknowledge the earlier one too,
    unclaimed, and lose it."""
    from django_tasks.backends.rabbitmq import consumer as amqp_consumer

    # Delivered first (same priority: in order), taken last (due later than "now").
    later = tasks.add.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue(1, 1)
    sooner = tasks.add.enqueue(2, 2)
    firsts = [tasks.add.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue(i, i)
              for i in range(3, 6)]
    b = broker()
    b.flush()
    acks = []
    original = amqp_consumer.Consumer._settle

    def settle(self, parcels, *, ack):
        acks.append(len(parcels))
        original(self, parcels, ack=ack)

    monkeypatch.setattr(amqp_consumer.Consumer, "_settle", settle)
    [m] = b.claim("w", "L", ["default"], 1)
    assert m.id == sooner.id
    b.close()  # the other four were not acknowledged: requeued
    assert wait_for(lambda: messages() == 4, timeout=5)
    got = b.claim("w", "L", ["default"], 10)
    assert sorted(m.id for m in got) == sorted([later.id] + [j.id for j in firsts])
    b.close()  # now a settled run: acknowledged, nothing comes back
    assert wait_for(lambda: messages() == 0, timeout=5)
    assert acks == [1, 4]


def test_the_prefetch_is_per_consumer_and_sized_by_the_worker():
    for i in range(5):
        tasks.add.enqueue(i, i)
    b = broker()
    consumer = Consumer(b.url, b.topology, ["default"], prefetch=2)
    try:
        assert wait_for(lambda: consumer.held() == 2, timeout=5)
        assert messages() == 3  # the other three wait in RabbitMQ for other workers
    finally:
        consumer.close()
    assert wait_for(lambda: messages() == 5, timeout=5)  # unacknowledged: requeued


def test_deliveries_reach_the_buffer_in_the_order_rabbitmq_sent_them():
    """The consumer reads whole deliveries itself and leaves the rest (one split across
    two reads of the socket) to pika: both must reach the buffer in the order they were
    sent, or an ack ``multiple`` of a later one acknowledges an earlier one not yet
    seen, whose own ack then closes the channel (``unknown delivery tag``)."""
    b = broker()
    n = 3000
    ids = [f"0190{i:028x}" for i in range(n)]
    for at in range(0, n, 500):  # one id a message: a distinct due time each
        assert b.publisher.publish([(i, "default", 0, at + k)
                                    for k, i in enumerate(ids[at:at + 500])]) == []
    consumer = Consumer(b.url, b.topology, ["default"], prefetch=300)
    got = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            taken = consumer.take(50, settle=0.5)
            got += taken
            consumer.ack(taken)  # while more arrive: the I/O thread sends them between
        reconnects = consumer._generation - 1
    finally:
        consumer.close()
    assert sorted(d.job_id for d in got) == ids
    arrival_order = sorted(got, key=lambda d: d.rank[2])
    tags = [d.parcel.tag for d in arrival_order]
    assert tags == sorted(tags) and len(set(tags)) == n
    assert reconnects == 0
    assert wait_for(lambda: messages() == 0, timeout=5)  # every ack was taken


def test_a_message_without_an_id_is_acknowledged_with_the_next_run():
    """Someone else's empty message in our queue holds no job: it must not stay
    unacknowledged, holding a prefetch slot and splitting every later ack."""
    b = broker()
    b.publisher.counts(["default"])  # the queue exists: the default exchange drops the rest
    conn = connect(b.url)
    try:
        conn.channel().basic_publish("", b.topology.name("default"), b"")
    finally:
        conn.close()
    job = tasks.add.enqueue(1, 1)
    b.flush()
    consumer = Consumer(b.url, b.topology, ["default"], prefetch=10)
    try:
        # Both delivered (the empty one buffers nothing), then the job's ack.
        assert wait_for(lambda: len(consumer._unacked) == 2, timeout=5)
        [delivery] = consumer.take(10)
        assert delivery.job_id == job.id
        consumer.ack([delivery])
        assert wait_for(lambda: not consumer._unacked, timeout=5)
    finally:
        consumer.close()
    assert wait_for(lambda: messages() == 0, timeout=5)  # both acknowledged


def test_tasks_status_shows_each_queues_messages_and_consumers(settings):
    tasks.add.enqueue(1, 1)
    tasks.add.using(queue_name="emails").enqueue(2, 2)
    out = StringIO()
    call_command("tasks", "status", "--backend", "default", stdout=out)
    text = out.getvalue()
    prefix = broker().topology.prefix
    assert f"(prefix {prefix}):" in text
    assert f"  queue default ({prefix}.default): 1 message(s) ready, 0 consumer(s)" in text
    assert f"  queue emails ({prefix}.emails): 1 message(s) ready, 0 consumer(s)" in text
    good = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {
        **good, "OPTIONS": {**good["OPTIONS"], "URL": "amqp://guest:secret@127.0.0.1:1/%2F"}}}
    out = StringIO()
    call_command("tasks", "status", "--backend", "default", stdout=out)  # one line, no raise
    [line] = [x for x in out.getvalue().splitlines() if "RabbitMQ" in x]
    assert line.startswith("RabbitMQ at amqp://guest:***@127.0.0.1:1/%2F (prefix ")
    assert "unreachable (" in line and "secret" not in line


def test_a_worker_that_cannot_reach_rabbitmq_at_start_says_so_in_one_line():
    url = "amqp://guest:guest@127.0.0.1:1/%2F"
    proc = start_worker("--burst", env={"TEST_RABBITMQ_URL": url})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    [line] = [x for x in out.splitlines() if "Cannot start" in x]
    assert "Cannot start: RabbitMQ at amqp://guest:***@127.0.0.1:1/%2F is unreachable" in line
    assert "Traceback" not in out


def test_the_options_are_checked():
    from django_tasks.backends.rabbitmq import RabbitMQBackend

    for options, expected in [
        ({}, "is required"),
        ({"URL": "redis://x"}, "must be an amqp:// or amqps:// URL"),
        ({"URL": "pyamqp://guest@localhost//"}, "must be an amqp://"),
        ({"URL": "amqp://x", "PREFETCH": 0}, "PREFETCH'] must be an integer from 1"),
    ]:
        errors = RabbitMQBackend("x", {"QUEUES": [], "OPTIONS": options}).check()
        assert [e.id for e in errors] == ["django_tasks.E007"], options
        assert expected in errors[0].msg
    [error] = RabbitMQBackend("x", {"QUEUES": [], "OPTIONS": {
        "URL": "pyamqp://guest@localhost//"}}).check()
    assert "amqp:// here" in error.hint


def _rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_rabbitmq_restarted_under_load_nothing_is_lost_or_stuck_nothing_runs_twice(tmp_path):
    """stop_app/start_app while a worker drains 2,000 jobs and a producer enqueues more:
    both reconnect by themselves, the worker logs the outage once and its end once, and
    every job runs exactly once."""
    log = tmp_path / "runs"
    results = [rt.record.enqueue(str(log)) for _ in range(2000)]
    ids = {r.id for r in results}
    produced: list[str] = []
    stop_producing = threading.Event()

    def produce():  # a producer that keeps enqueueing through the outage
        try:
            # ~200 a second: an enqueue no longer waits for RabbitMQ's confirm, and an
            # unpaced producer reached its cap before stop_app had returned.
            while not stop_producing.wait(0.005) and len(produced) < 5000:
                produced.append(rt.record.enqueue(str(log)).id)
        finally:
            connection.close()

    proc = start_worker("-c", "4", "--loglevel", "WARNING")
    producer = threading.Thread(target=produce)
    try:
        assert wait_for(lambda: len(runs(log)) >= 300, timeout=60)
        producer.start()
        _rabbitmqctl("stop_app")
        stopped_at = len(produced)
        try:
            # Enqueues go on while it is down (rows committed, publishes refused).
            assert wait_for(lambda: len(produced) >= stopped_at + 50, timeout=30)
        finally:
            _rabbitmqctl("start_app")
        stop_producing.set()
        producer.join(timeout=60)
        ids |= set(produced)
        unfinished = Job.objects.filter(pk__in=ids).exclude(status="SUCCESSFUL")
        assert wait_for(lambda: not unfinished.exists(), timeout=90), unfinished.count()
    finally:
        stop_producing.set()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    counts = runs(log)
    print(f"\nRabbitMQ restart under load: {len(ids)} jobs ({len(produced)} enqueued around "
          f"the restart), {len(counts)} ran, {sum(n > 1 for n in counts.values())} twice")
    assert proc.returncode == 0, out
    assert set(counts) == ids
    assert set(counts.values()) == {1}
    assert out.count("unreachable") == 1, out
    assert out.count(" back after ") == 1, out
