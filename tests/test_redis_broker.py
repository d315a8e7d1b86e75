"""What only the Redis broker has to prove: publish after commit, Redis forgetting,
connections killed, keys that do not grow. The contract it shares with the database
broker is in test_broker_contract.py, and the crash scenarios run with it there too
(the ``broker`` fixture).

Restarts and CLIENT KILL use a private ``redis-server`` on a free port, never the
shared one.
"""

import logging
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter

import pytest
import redis
from django.core.management import call_command
from django.db import transaction
from django.tasks import task_backends
from django.utils import timezone

from django_tasks.models import Job, Worker
from tests import reliability_tasks as rt
from tests import tasks
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.fixture(autouse=True)
def _redis(redis_default):
    """Every test here runs with the Redis broker as the default backend."""


def backend():
    return task_backends["default"]


def client():
    return backend().broker.client


def key(*parts):
    return backend().broker.key(*parts)


def queued(job_id, queue="default"):
    backend().broker.flush()  # publishes are sent without waiting for their replies
    return in_redis(job_id, queue)


def in_redis(job_id, queue="default"):
    return client().zscore(key("q", queue), str(job_id)) is not None


def runs(path):
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


# -- publishing -----------------------------------------------------------------------


def test_a_job_is_published_when_its_transaction_commits_and_never_on_rollback():
    with transaction.atomic():
        kept = tasks.add.enqueue(1, 1)
        assert Job.objects.filter(pk=kept.id).exists()  # the row is in the transaction
        assert not queued(kept.id)  # the message waits for the commit
    assert queued(kept.id)
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = tasks.add.enqueue(2, 2)
        raise RuntimeError("roll back")
    assert not queued(dropped.id) and not Job.objects.filter(pk=dropped.id).exists()


def test_jobs_of_one_priority_are_claimed_in_the_order_they_were_enqueued():
    # Published together at the commit, many share a millisecond: Redis breaks the tie
    # by id, which must follow creation.
    with transaction.atomic():
        results = [tasks.add.enqueue(i, i) for i in range(200)]
    broker = backend().broker
    claimed = [m.id for _ in results for m in broker.claim("w", "L", ["default"], 1)]
    assert claimed == [r.id for r in results]


def test_a_delayed_job_waits_in_the_delayed_set_and_is_claimed_when_due():
    from datetime import timedelta

    result = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
    assert not queued(result.id)
    assert client().zcard(key("delayed")) == 1
    broker = backend().broker
    assert broker.claim("w", "L", ["default"], 10) == []
    [message] = broker.claim("w", "L", ["default"], 10,
                             now=timezone.now() + timedelta(minutes=6))
    assert message.id == result.id and client().zcard(key("delayed")) == 0


def test_an_unreachable_redis_at_enqueue_keeps_the_job_and_the_reconciler_publishes_it(
        settings, caplog):
    backend().broker.reconcile(["default"])  # Redis is known to hold the queues
    good = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {
        **good, "OPTIONS": {**good["OPTIONS"], "URL": "redis://127.0.0.1:1/0"}}}
    with caplog.at_level(logging.WARNING, logger="django_tasks.worker"):
        result = tasks.add.enqueue(1, 1)  # does not raise: the row is committed
    assert Job.objects.get(pk=result.id).status == "READY"
    assert any("could not be published" in r.getMessage() and result.id in r.getMessage()
               for r in caplog.records)
    settings.TASKS = {**settings.TASKS, "default": good}
    broker = backend().broker
    assert not queued(result.id)
    republished_at_the_second_reconcile(broker, result.id)
    [message] = broker.claim("w", "L", ["default"], 10)
    assert message.id == result.id


def republished_at_the_second_reconcile(broker, job_id):
    """A READY job Redis does not hold is published again by the second reconcile that
    misses it, not the first (one alone may be a publish in flight)."""
    broker.reconcile(["default"])
    assert not queued(job_id)
    broker.reconcile(["default"])
    assert queued(job_id)


def test_a_claim_lost_by_the_database_is_published_again_by_the_reconcile():
    # An idle worker's claim does not wait for the disk (ByIds.no_disk_wait): a
    # PostgreSQL crash may lose it after Redis handed the id over. The row is READY
    # again, its id only in the worker's held hash: the reconcile finds it missing
    # from the queue.
    # A running worker: the reconcile does not rescue what it holds.
    Worker.objects.create(id="w", hostname="h", pid=1, backend="default", concurrency=1,
                          pool="prefork", started_at=timezone.now(),
                          last_heartbeat_at=timezone.now())
    result = tasks.add.enqueue(1, 1)
    broker = backend().broker
    broker.reconcile(["default"])
    [message] = broker.claim("w", "L", ["default"], 10)
    assert message.id == result.id and not queued(result.id)
    Job.objects.filter(pk=result.id).update(status="READY", worker_id="", lease="")  # lost
    republished_at_the_second_reconcile(broker, result.id)
    [again] = broker.claim("w2", "L2", ["default"], 10)
    assert again.id == result.id


def test_a_stale_or_duplicated_message_claims_nothing_and_is_dropped():
    result = tasks.add.enqueue(1, 1)
    broker = backend().broker
    assert [m.id for m in broker.claim("w", "L", ["default"], 10)] == [result.id]
    # The same id published again (a reconcile racing a claim, a replayed publish).
    broker._send([(100, 0, "default", result.id)])
    assert broker.claim("other", "L2", ["default"], 10) == []
    assert not queued(result.id)
    assert Job.objects.get(pk=result.id).lease == "L"


def test_publishes_are_not_waited_for_but_every_reply_is_read():
    from django_tasks.backends.redis.publisher import MAX_IN_FLIGHT

    publisher = backend().broker.publisher
    first = tasks.add.enqueue(0, 0)
    assert len(publisher._in_flight) == 1  # sent; its reply is read later
    results = [first]
    for i in range(2 * MAX_IN_FLIGHT):
        results.append(tasks.add.enqueue(i, i))
        assert len(publisher._in_flight) <= MAX_IN_FLIGHT
    backend().broker.flush()
    assert not publisher._in_flight
    assert all(in_redis(r.id) for r in results)


def test_a_publish_redis_refuses_is_logged_naming_the_job(private_redis, caplog):
    tasks.add.enqueue(0, 0)
    private_redis.client().config_set("maxmemory", "1")  # noeviction: writes refused
    with caplog.at_level(logging.WARNING, logger="django_tasks.worker"):
        refused = tasks.add.enqueue(1, 1)  # does not raise: the row is committed
        backend().broker.flush()
    assert Job.objects.get(pk=refused.id).status == "READY"
    [record] = [r for r in caplog.records if "could not be published" in r.getMessage()]
    assert refused.id in record.getMessage() and "OutOfMemoryError" in record.getMessage()
    private_redis.client().config_set("maxmemory", "0")
    assert not in_redis(refused.id)


def test_a_killed_publish_connection_loses_no_publish(private_redis, caplog):
    first = tasks.add.enqueue(0, 0)
    assert queued(first.id)
    private_redis.client().client_kill_filter(_type="normal", skipme=True)
    with caplog.at_level(logging.WARNING, logger="django_tasks.worker"):
        results = [tasks.add.enqueue(i, i) for i in range(50)]
        backend().broker.flush()
    assert all(in_redis(r.id) for r in results)
    assert not [r for r in caplog.records if "could not be published" in r.getMessage()]


def test_after_a_pause_the_publish_connection_is_looked_at_before_it_is_used(
        private_redis, monkeypatch):
    from django_tasks.backends.redis import publisher as redis_publisher

    first = tasks.add.enqueue(0, 0)
    assert queued(first.id)
    private_redis.kill()
    private_redis.start()  # same port, empty; the publisher's socket is dead
    monkeypatch.setattr(redis_publisher, "IDLE", 0.0)  # "a pause" without sleeping
    after = tasks.add.enqueue(1, 1)
    # Not flushed: had it been written to the dead socket, nothing would say so.
    assert wait_for(lambda: in_redis(after.id), timeout=5)


# -- Redis forgets ----------------------------------------------------------------------


def test_redis_flushed_everything_ready_is_republished_and_running_jobs_keep_their_lease():
    broker = backend().broker
    running = tasks.add.enqueue(1, 1)
    [message] = broker.claim("w", "L", ["default"], 1)
    waiting = [tasks.add.enqueue(i, i) for i in range(5)]
    broker.reconcile(["default"])  # sets the epoch
    for k in client().scan_iter(match=f"{broker.prefix}:*"):
        client().delete(k)
    broker.reconcile(["default"])  # no epoch: republish every READY row
    assert all(queued(r.id) for r in waiting) and not queued(running.id)
    got = broker.claim("w2", "L2", ["default"], 10)
    assert sorted(m.id for m in got) == sorted(r.id for r in waiting)
    assert Job.objects.get(pk=message.id).lease == "L"


def test_a_dead_workers_held_jobs_are_recovered_even_if_it_held_no_row():
    broker = backend().broker
    result = tasks.add.enqueue(1, 1)
    # Popped into a worker's held hash, killed before its claim reached the database.
    assert broker._pop("ghost", ["default"], 1, None) == [result.id]
    assert not queued(result.id) and client().hlen(key("held", "ghost")) == 1
    broker.reconcile(["default"])  # "ghost" is not a running worker
    assert queued(result.id)
    assert not client().exists(key("held", "ghost"))
    assert not client().sismember(key("holders"), "ghost")


def test_no_keys_are_left_behind_by_a_worker_that_drained_its_queue():
    for i in range(100):
        tasks.add.enqueue(i, i)
    tasks.add.using(queue_name="emails").enqueue(0, 0)
    proc = start_worker("--burst", "-c", "2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert Job.objects.filter(status="SUCCESSFUL").count() == 101
    prefix = backend().broker.prefix
    left = {k.decode().removeprefix(prefix + ":") for k in client().scan_iter(match=f"{prefix}:*")}
    assert left <= {"epoch"}, left


# -- an idle worker waits in Redis for its next job (wakeup.py) ------------------------------


def readable(source, timeout):
    import select

    return select.select([source], [], [], timeout)[0] == [source]


def blocked_pops():
    """Connections blocked in Redis (a BZPOPMIN waiting for a job)."""
    return [c for c in client().client_list() if "b" in c["flags"]]


def test_an_armed_wake_source_takes_the_next_job_and_the_claim_needs_no_pop():
    broker = backend().broker
    source = broker.wake_source(["emails", "default"])
    try:
        source.arm("w")
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        first = tasks.add.enqueue(1, 1)
        assert readable(source, 5)
        assert source.drain() == 1
        second = tasks.add.enqueue(2, 2)  # armed for one job: this one stays queued
        assert queued(second.id) and not queued(first.id)
        assert wait_for(lambda: client().hget(key("held", "w"), str(first.id)) is not None)
        assert client().sismember(key("holders"), "w")
        # The claim takes the id handed over, and pops nothing more (the job waiting
        # for the worker starts a round trip sooner; the next claim pops the rest).
        assert [m.id for m in broker.claim("w", "L", ["default"], 10)] == [first.id]
        assert queued(second.id)
        assert [m.id for m in broker.claim("w", "L", ["default"], 10)] == [second.id]
    finally:
        source.close()


def test_of_two_idle_workers_only_one_takes_a_job():
    broker = backend().broker
    sources = [broker.wake_source(["default"]) for _ in range(2)]
    try:
        for n, source in enumerate(sources):
            source.arm(f"w{n}")
        assert wait_for(lambda: len(blocked_pops()) == 2, timeout=5)
        result = tasks.add.enqueue(1, 1)
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        woken = [s for s in sources if readable(s, 0.2)]
        assert len(woken) == 1
        assert list(broker._handed) == [result.id]
    finally:
        for source in sources:
            source.close()


def test_a_wake_source_not_armed_or_disarmed_takes_nothing():
    broker = backend().broker
    source = broker.wake_source(["default"])
    try:
        early = tasks.add.enqueue(1, 1)
        assert not readable(source, 0.3) and queued(early.id)  # never armed
        source.arm("w")
        assert readable(source, 5) and not queued(early.id)
        source.drain()
        source.arm("w")
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        source.disarm()  # returns once the pop in flight has ended
        assert blocked_pops() == []
        late = tasks.add.enqueue(2, 2)
        assert not readable(source, 0.3) and queued(late.id)
    finally:
        source.close()
    assert blocked_pops() == []


def test_disarm_ends_the_pop_at_once_after_redis_py_connected_again_by_itself(
        private_redis, settings):
    """With a retry policy in CONNECTION_OPTIONS, a health check (the broker's default,
    every 15 s; 1 s here) that finds the wake connection closed (here a CLIENT KILL
    while the worker was busy, not armed) makes redis-py connect again by itself:
    CLIENT UNBLOCK must name the new connection, or disarm waits for the pop's own
    timeout. (Without a retry policy the pop fails, and the worker opens a new source.)"""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from django_tasks.backends.redis.wakeup import BLOCK

    default = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {**default, "OPTIONS": {
        **default["OPTIONS"], "CONNECTION_OPTIONS": {
            "health_check_interval": 1, "retry": Retry(NoBackoff(), 1)}}}}
    admin = private_redis.client()
    source = backend().broker.wake_source(["default"])
    try:
        first = source._client_id
        assert admin.client_kill_filter(_id=first) == 1
        time.sleep(1.1)  # the health check is due: the next command checks first
        source.arm("w")
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        [blocked] = blocked_pops()
        assert int(blocked["id"]) != first
        assert source._client_id == int(blocked["id"])
        started = time.monotonic()
        source.disarm()
        assert time.monotonic() - started < BLOCK / 2
        assert blocked_pops() == []
    finally:
        source.close()


def test_a_job_popped_once_the_worker_stopped_wanting_it_goes_back_as_it_was():
    from datetime import timedelta

    from django_tasks.backends.base import epoch_ms

    broker = backend().broker
    due = timezone.now() - timedelta(seconds=1)
    source = broker.wake_source(["default"])
    try:
        source.arm("w")
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        # The worker stops wanting jobs while the pop is blocked, and a job arrives
        # before the pop ends (what disarm() does first, without ending the pop).
        with source._cond:
            source._holder = None
        result = tasks.add.using(priority=7, run_after=due).enqueue(1, 1)
        assert wait_for(lambda: queued(result.id) and not blocked_pops(), timeout=5)
        assert not readable(source, 0.3) and not broker._handed
        assert client().hlen(key("held", "w")) == 0
    finally:
        source.close()
    # Its score as published: priority, then due time.
    expected = (100 - 7) * 2**42 + epoch_ms(due)
    assert client().zscore(key("q", "default"), str(result.id)) == expected


def test_a_worker_whose_slots_are_busy_leaves_the_next_job_to_an_idle_one():
    """A worker waits in Redis only with a free slot: with its one slot busy it has room
    in its buffer, but a job it took would wait there while another worker stood idle."""
    # A 60 s poll: only the wait in Redis can start the job within the long job's run.
    env = {"DJANGO_TASKS_TEST_POLL_INTERVAL": "60"}
    busy = start_worker("-c", "1", "--worker-id", "busy", env=env)
    idle = None
    try:
        long = tasks.sleep_then_return.enqueue(8)
        assert wait_for(lambda: Job.objects.get(pk=long.id).status == "RUNNING", timeout=30)
        idle = start_worker("-c", "1", "--worker-id", "idle", env=env)
        assert wait_for(lambda: Worker.objects.filter(id="idle", stopped_at=None).exists(),
                        timeout=30)
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=10)  # the idle one's
        quick = tasks.add.enqueue(1, 1)
        assert wait_for(lambda: Job.objects.get(pk=quick.id).status == "SUCCESSFUL",
                        timeout=6)
        assert Job.objects.get(pk=quick.id).worker_ids == ["idle"]
        assert Job.objects.get(pk=long.id).status == "RUNNING"
    finally:
        for proc in (busy, idle):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=60)[0] for p in (busy, idle) if p is not None]
    assert [p.returncode for p in (busy, idle)] == [0, 0], outs


def test_an_idle_worker_starts_a_job_that_another_worker_made_due():
    """Due delayed jobs are moved into their queue by whichever worker pops next: the
    move hands them to a worker waiting in Redis, as a publish does."""
    from datetime import timedelta

    broker = backend().broker
    source = broker.wake_source(["default"])
    try:
        result = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
        source.arm("w")
        assert wait_for(lambda: len(blocked_pops()) == 1, timeout=5)
        later = timezone.now() + timedelta(minutes=6)
        assert broker.claim("other", "L", ["emails"], 1, now=later) == []  # moves it
        assert readable(source, 5)
        assert list(broker._handed) == [result.id]
    finally:
        source.close()


# -- configuration and operator messages ---------------------------------------------------


def test_tasks_status_says_what_redis_holds(settings):
    from datetime import timedelta
    from io import StringIO

    broker = backend().broker
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)
    tasks.add.using(queue_name="emails").enqueue(3, 3)
    tasks.add.using(run_after=timedelta(minutes=5)).enqueue(4, 4)
    broker.flush()
    [claimed] = broker.claim("w-1", "L", ["default"], 1)
    out = StringIO()
    call_command("tasks", "status", stdout=out)
    text = out.getvalue()
    assert f"Redis at {broker.safe_url()} (prefix {broker.prefix}):" in text
    assert "  queue default: 1 id(s) ready" in text
    assert "  queue emails: 1 id(s) ready" in text
    assert "  delayed: 1 id(s) not due yet" in text
    assert "  held: 1 id(s) by 1 worker(s) (w-1 1)" in text
    assert "  epoch: missing" in text  # no worker has reconciled yet
    broker.reconcile(["default"])
    out = StringIO()
    call_command("tasks", "status", stdout=out)
    assert "  epoch: set" in out.getvalue()
    assert claimed.id  # held by w-1 until its outcome is written

    good = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {
        **good, "OPTIONS": {**good["OPTIONS"], "URL": "redis://127.0.0.1:1/0"}}}
    out = StringIO()
    call_command("tasks", "status", stdout=out)  # does not raise: it says so
    assert "Redis at redis://127.0.0.1:1/0" in out.getvalue()
    assert "unreachable (ConnectionError" in out.getvalue()



def test_a_worker_that_cannot_reach_redis_at_start_says_so(settings):
    proc = start_worker("--burst", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Cannot start: Redis at redis://127.0.0.1:1/0 is unreachable" in out, out
    assert "Traceback" not in out


def test_the_redis_url_is_required_and_checked(settings):
    from django_tasks.backends.redis.broker import RedisBackend

    for url, expected in [(None, "is required"), ("http://x", "must be a redis://")]:
        options = {} if url is None else {"URL": url}
        errors = RedisBackend("x", {"QUEUES": [], "OPTIONS": options}).check()
        assert [e.id for e in errors] == ["django_tasks.E006"]
        assert expected in errors[0].msg


# -- a private redis-server: restarts, eviction policy, CLIENT KILL ----------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throwaway redis-server (no persistence) on a free port."""

    def __init__(self, tmp_path):
        self.port = _free_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        c = redis.Redis.from_url(self.url)

        def up():
            try:
                return c.ping()
            except redis.ConnectionError:
                return False
        assert wait_for(up, timeout=10)
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def client(self):
        return redis.Redis.from_url(self.url)


@pytest.fixture
def private_redis(tmp_path, settings, monkeypatch):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path).start()
    default = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {
        **default, "OPTIONS": {**default["OPTIONS"], "URL": server.url}}}
    monkeypatch.setenv("REDIS_URL", server.url)  # the workers the test starts
    yield server
    server.kill()


def test_an_evicting_maxmemory_policy_is_a_system_check_warning(private_redis, capsys):
    private_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    [warning] = [m for m in backend().check() if m.id == "django_tasks.W001"]
    assert "allkeys-lru" in warning.msg and "noeviction" in warning.hint
    call_command("check")  # a warning, not an error: manage.py check still passes
    private_redis.client().config_set("maxmemory-policy", "noeviction")
    assert not [m for m in backend().check() if m.id == "django_tasks.W001"]


@pytest.mark.slow
def test_redis_restarted_empty_under_load_nothing_is_lost_nothing_runs_twice(
        private_redis, tmp_path):
    log = tmp_path / "runs"
    results = [rt.record.enqueue(str(log)) for _ in range(600)]
    ids = {r.id for r in results}
    proc = start_worker("-c", "2", "--loglevel", "WARNING")
    try:
        assert wait_for(lambda: len(runs(log)) >= 100, timeout=30)
        private_redis.kill()
        private_redis.start()  # same port, empty: no persistence
        restarted = time.monotonic()
        before = len(runs(log))
        assert wait_for(lambda: len(runs(log)) > before + 10, timeout=20)
        resumed_in = time.monotonic() - restarted
        unfinished = Job.objects.filter(pk__in=ids).exclude(status="SUCCESSFUL")
        assert wait_for(lambda: not unfinished.exists(), timeout=60), unfinished.count()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    print(f"\nRedis restart: jobs ran again {resumed_in:.2f} s after the restart")
    assert proc.returncode == 0, out
    assert resumed_in < 10
    counts = runs(log)
    assert set(counts) == ids and set(counts.values()) == {1}
    assert "republished" in out


@pytest.mark.slow
def test_client_kill_under_load_and_while_idle_the_worker_resumes(private_redis, tmp_path):
    log = tmp_path / "runs"
    admin = private_redis.client()
    # A 60 s poll: a job picked up within seconds after the kill proves the wake-up
    # connection (blocked in BZPOPMIN while the worker is idle) came back.
    proc = start_worker("-c", "2", "--loglevel", "WARNING",
                        env={"DJANGO_TASKS_TEST_POLL_INTERVAL": "60"})
    try:
        results = [rt.record.enqueue(str(log)) for _ in range(400)]
        assert wait_for(lambda: len(runs(log)) >= 50, timeout=30)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 2
        done = Job.objects.filter(pk__in=[r.id for r in results], status="SUCCESSFUL")
        assert wait_for(lambda: done.count() == 400, timeout=60)
        # Idle now, waiting in Redis for its next job: kill its connections again, then a
        # new job must start within 10 s.
        assert wait_for(lambda: any(c["cmd"] == "bzpopmin" for c in admin.client_list()),
                        timeout=10)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        time.sleep(0.5)
        started = time.monotonic()
        later = rt.record.enqueue(str(log))
        assert wait_for(lambda: runs(log)[later.id] == 1, timeout=10)
        print(f"\nCLIENT KILL: an idle worker picked up a job "
              f"{time.monotonic() - started:.2f} s after its connections were killed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert set(runs(log).values()) == {1}



@pytest.mark.slow
def test_results_are_written_while_redis_is_down(private_redis, tmp_path):
    log = tmp_path / "runs"
    job = rt.record_slowly.enqueue(str(log), 1.5)
    proc = start_worker("-c", "1", "--loglevel", "WARNING")
    try:
        assert wait_for(lambda: runs(log)[job.id] == 1, timeout=30)
        private_redis.kill()  # down while the job runs; the database stays up
        assert wait_for(lambda: Job.objects.get(pk=job.id).status == "SUCCESSFUL",
                        timeout=15)
        private_redis.start()
        later = rt.record.enqueue(str(log))
        assert wait_for(lambda: Job.objects.get(pk=later.id).status == "SUCCESSFUL",
                        timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "results are still written to the database" in out
    assert Job.objects.get(pk=job.id).attempts == 1
