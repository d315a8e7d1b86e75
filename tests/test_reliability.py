"""Nothing lost, nothing stuck: rescue, leases and the worker's bookkeeping, in-process.

Time is a parameter: a dead worker is made by moving its heartbeat back, never by
sleeping. The real-process versions (kill -9, SIGSTOP, dropped connections) are in
test_crashes.py.
"""

import dataclasses
import re
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import DatabaseError, connection
from django.tasks import TaskResultStatus, default_task_backend
from django.tasks.signals import task_finished
from django.utils import timezone

from django_tasks import EnqueueError
from django_tasks.conf import BackendOptions
from django_tasks.jobs.messages import Outcome, Start
from django_tasks.models import Job, Worker
from django_tasks.worker import Phase, TaskWorker
from django_tasks.worker.liveness import is_gone, process_key
from tests import reliability_tasks as rt
from tests import tasks
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
backend = default_task_backend
broker = backend.broker
store = backend.store


@pytest.fixture(autouse=True)
def _current_backend():
    """A TASKS override (the Redis broker's tests) makes new backend instances: bind
    this module's shortcuts to the current ones."""
    global backend, broker, store
    backend = default_task_backend
    broker, store = backend.broker, backend.store


def register(worker_id, *, beat_age=0.0, now=None, key=""):
    store.register_worker(
        id=worker_id, hostname="h", pid=1, backend="default", queues=["default"],
        concurrency=1, pool="prefork", process_key=key,
    )
    if beat_age or now:  # move the heartbeat back rather than sleep
        now = now or timezone.now()
        Worker.objects.filter(pk=worker_id).update(
            started_at=now, last_heartbeat_at=now - timedelta(seconds=beat_age))


def claim(worker_id, n=1, lease=None):
    return broker.claim(worker_id, lease or f"{worker_id}-lease", ["default"], n)


def start(worker_id, messages):
    at = timezone.now().isoformat()
    store.record_starts(worker_id, [Start(m.id, m.lease, at) for m in messages])


def test_expired_worker_is_declared_dead_and_its_jobs_rescued(tmp_path):
    now = timezone.now()
    register("dead", beat_age=60, now=now)
    register("alive", now=now)
    results = [rt.record.enqueue(str(tmp_path / "runs")) for _ in range(3)]  # 3 attempts
    running, prefetched = claim("dead", 2)
    start("dead", [running])
    kept = claim("alive")[0]

    rescued = store.rescue_orphans("rescuer", now)

    assert [(holder, counts) for holder, _, counts in rescued] == [("dead", (1, 1, 0))]
    dead = Worker.objects.get(pk="dead")
    assert dead.stopped_at == now and "no heartbeat for 60 s" in dead.stop_reason
    job = Job.objects.get(pk=running.id)
    assert (job.status, job.attempts, job.worker_id, job.lease) == ("READY", 1, "dead", "")
    assert job.errors[-1]["exception_class_path"].endswith("WorkerLost")
    # The task's policy decides, as for any failure: backoff 1 s, jitter to [0.5, 1] s,
    # from when the outcome was written (by the database's clock on PostgreSQL).
    assert now + timedelta(seconds=0.5) <= job.available_at
    assert job.available_at <= timezone.now() + timedelta(seconds=1)
    assert "worker dead was lost" in job.errors[-1]["message"]
    assert job.errors[-1]["attempt"] == 1
    untouched = Job.objects.get(pk=prefetched.id)
    assert (untouched.status, untouched.attempts, untouched.worker_id) == ("READY", 0, "")
    assert untouched.errors == []
    assert Job.objects.get(pk=kept.id).status == "CLAIMED"  # a live worker keeps its jobs
    assert len(results) == 3
    # the rescued jobs run again once due, and the attempt count carries on
    TaskWorker(pool="inline", queues=["default"]).drain(now + timedelta(seconds=2))
    job.refresh_from_db()
    assert (job.status, job.attempts, len(job.worker_ids)) == ("SUCCESSFUL", 2, 2)


def test_a_dead_workers_last_attempt_fails_with_the_reason():
    register("dead", beat_age=60)
    result = tasks.add.enqueue(1, 1)  # max_attempts=1
    start("dead", claim("dead"))
    finished = []

    def receiver(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status))

    task_finished.connect(receiver)
    try:
        store.rescue_orphans("rescuer")
    finally:
        task_finished.disconnect(receiver)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == "django_tasks.exceptions.WorkerLost"
    assert result.finished_at is not None
    assert finished == [(result.id, TaskResultStatus.FAILED)]  # rescued jobs finish too


def test_a_lost_worker_follows_the_tasks_retry_on():
    register("dead", beat_age=60)
    # retries ConnectionError only: losing the worker is not a reason to run it again
    result = tasks.fails_with_type_error.enqueue()
    start("dead", claim("dead"))
    store.rescue_orphans("rescuer")
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts, job.max_attempts) == ("FAILED", 1, 3)


def test_a_heartbeat_within_the_timeout_keeps_the_jobs():
    register("slow", beat_age=1.5)  # WORKER_TIMEOUT is 2 s in the test settings
    result = tasks.add.enqueue(1, 1)
    start("slow", claim("slow"))
    assert store.rescue_orphans("rescuer") == []
    assert Job.objects.get(pk=result.id).status == "RUNNING"
    # ... and a worker that comes back after being declared dead learns it
    assert store.heartbeat("slow") is True
    store.rescue_orphans("rescuer", timezone.now() + timedelta(seconds=10))
    assert store.heartbeat("slow") is False


def test_jobs_of_a_stopped_or_unknown_worker_are_rescued_at_once():
    register("stopped")
    a = tasks.add.enqueue(1, 1)
    b = tasks.add.enqueue(2, 2)
    claim("stopped")
    store.unregister_worker("stopped", reason="stopped at once")
    claim("never-registered")
    rescued = {holder: why for holder, why, _ in store.rescue_orphans("rescuer")}
    assert rescued == {"stopped": "stopped at once", "never-registered": "not registered"}
    assert {Job.objects.get(pk=r.id).status for r in (a, b)} == {"READY"}


def test_the_holders_are_the_workers_with_claimed_or_running_jobs():
    for i in range(6):
        tasks.add.enqueue(i, i)
    assert store.engine.holders() == []
    claim("b", 2)
    start("c", claim("c"))
    done = claim("a")
    assert broker.exchange("a", lease="x", outcomes=[Outcome(
        id=done[0].id, lease=done[0].lease, status="SUCCESSFUL",
        finished_at=timezone.now().isoformat())]).applied
    claim("")  # a holder without a name is one too
    assert sorted(store.engine.holders()) == ["", "b", "c"]


def test_a_worker_whose_process_is_gone_is_dead_without_waiting(tmp_path):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    key = process_key(child.pid)
    child.wait()
    if not key:
        pytest.skip("needs Linux /proc to identify processes")
    assert is_gone(SimpleNamespace(process_key=key))
    assert not is_gone(SimpleNamespace(process_key=process_key()))  # this one is alive
    assert not is_gone(SimpleNamespace(process_key=key.replace("|", "x|", 1)))  # other host
    register("killed", key=key)  # fresh heartbeat
    register("here", key=process_key())
    result = tasks.add.enqueue(1, 1)
    claim("killed")
    rescued = store.rescue_orphans("rescuer", is_gone=is_gone)
    assert [holder for holder, _, _ in rescued] == ["killed"]
    assert "is gone" in Worker.objects.get(pk="killed").stop_reason
    assert Worker.objects.get(pk="here").stopped_at is None
    assert Job.objects.get(pk=result.id).status == "READY"


def test_outcomes_and_starts_of_a_worker_that_lost_its_jobs_are_ignored(tmp_path):
    register("old", beat_age=60)
    result = rt.record.enqueue(str(tmp_path / "runs"))
    [first] = claim("old")
    start("old", [first])
    now = timezone.now()
    store.rescue_orphans("rescuer", now)
    claimed = broker.claim("new", "new-lease", ["default"], 1, now + timedelta(seconds=2))
    assert [m.attempt for m in claimed] == [2]
    late = Outcome(id=result.id, lease=first.lease, status="SUCCESSFUL", return_value=99,
                   finished_at=timezone.now().isoformat())
    restart = Start(result.id, first.lease, now.isoformat())
    done = broker.exchange("old", lease="x", starts=[restart], outcomes=[late])
    assert (done.applied, done.stale) == ([], [late])
    # Even under the rescued worker's id, an old lease writes nothing.
    assert broker.exchange("new", lease="y", outcomes=[late]).stale == [late]
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.worker_id, job.return_value, job.attempts) == ("CLAIMED", "new",
                                                                           None, 1)


def test_reconcile_gives_back_claims_whose_answer_was_lost():
    result = tasks.add.enqueue(1, 1)
    worker = TaskWorker(pool="inline", worker_id="w")
    claim("w")  # committed, but the worker never saw the rows
    worker.broker_thread.reconcile()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.worker_id, job.lease) == ("READY", "", "")


def test_interrupted_jobs_are_rescued_by_the_worker_itself():
    result = tasks.add.enqueue(1, 1)
    worker = TaskWorker(pool="inline", worker_id="w", prefetch=0)
    register("w")
    worker.exchange()
    (job_id,) = worker.snapshot().buffered
    worker.pool.submit = lambda message: None  # the pool takes the job and does not run it
    assert worker.dispatch() == 1  # started: running, its start not yet written
    snapshot = worker.snapshot()
    assert (snapshot.buffered, snapshot.running, snapshot.unrecorded_starts) == ((), (job_id,), 1)
    worker.pool.stop = lambda **kw: [job_id]  # the pool reports it killed the job
    worker.grace = 5
    worker.shutdown()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED  # max_attempts=1: no attempt left
    assert "shutdown grace period" in result.errors[-1].message
    assert Worker.objects.get(pk="w").stopped_at is not None


def test_worker_timeout_must_exceed_two_heartbeats():
    options = BackendOptions.parse({"HEARTBEAT_INTERVAL": 5, "WORKER_TIMEOUT": 8})
    assert options.worker_timeout == 30 and "WORKER_TIMEOUT" in options.problems[0]
    assert BackendOptions.parse({"WORKER_TIMEOUT": 11, "HEARTBEAT_INTERVAL": 5}).problems == ()


def test_enqueue_on_a_dropped_connection_is_a_clear_error_and_stores_nothing():
    if connection.vendor != "postgresql":
        pytest.skip("needs a server connection to drop")
    import psycopg

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                         user=db["USER"], dbname=db["NAME"], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(EnqueueError, match=r"Could not enqueue tests\.tasks\.add") as info:
        tasks.add.enqueue(1, 1)
    assert isinstance(info.value, DatabaseError)  # `except DatabaseError` still works
    connection.close()
    assert Job.objects.count() == 0
    assert tasks.add.enqueue(1, 1).id  # the next call reconnects


def test_tasks_status_shows_depths_and_alive_dead_stopped_workers():
    from io import StringIO

    from django.core.management import call_command

    register("alive-1")
    register("silent-1", beat_age=60)
    register("gone-1")
    store.unregister_worker("gone-1", reason="shutdown")
    for i in range(3):
        tasks.add.enqueue(i, i)
    claimed = claim("silent-1", 2)
    start("silent-1", claimed[:1])
    tasks.add.using(run_after=timedelta(hours=1)).enqueue(9, 9)  # READY, due later
    # A worker of another backend on the same database is not this backend's.
    Worker.objects.create(id="other-1", hostname="h", pid=2, backend="other", concurrency=1,
                          pool="prefork", started_at=timezone.now(),
                          last_heartbeat_at=timezone.now())
    out = StringIO()
    call_command("tasks", "status", "--backend", "default", stdout=out)
    text = out.getvalue()
    header, default_row = text.splitlines()[:2]
    assert header.split() == ["queue", "wait", "ready", "later", "claim", "run", "done",
                              "failed", "cancel", "oldest"]
    assert default_row.split()[:9] == ["default", "0", "1", "1", "1", "1", "0", "0", "0"]
    assert re.fullmatch(r"\d+s", default_row.split()[9])  # the oldest due READY job's wait
    assert max(len(line) for line in text.splitlines()[:3]) <= 80
    assert "other-1" not in text
    assert f"{claimed[0].id[-8:]}  tests.tasks.add  on silent-1  attempt 1/1" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    lines = {line.split()[0]: line for line in text.splitlines() if "-1 " in line}
    assert lines["alive-1"].split()[1:5] == ["alive", "prefork", "1", "0"]
    assert lines["silent-1"].split()[1:5] == ["dead", "prefork", "1", "2"]
    assert "stopped: shutdown" in lines["gone-1"]


def test_tasks_prune_command():
    from io import StringIO

    from django.core.management import CommandError, call_command

    tasks.add.enqueue(1, 1)
    TaskWorker(pool="inline").drain(timezone.now())
    out = StringIO()
    call_command("tasks", "prune", "--older-than", "0s", stdout=out)
    assert "Deleted 1 finished job(s)" in out.getvalue()
    with pytest.raises(CommandError, match="an age is a number with one of the units"):
        call_command("tasks", "prune", "--older-than", "soon")


def test_adaptive_prefetch_holds_what_the_slots_start_within_the_window():
    from django_tasks.worker.ledger import PREFETCH_PER_SLOT, PREFETCH_WINDOW

    worker = TaskWorker(pool="inline", concurrency=2)
    assert worker.adaptive_prefetch and worker.prefetch == 2 * PREFETCH_PER_SLOT
    assert worker.prefetch_now() == 2  # nothing measured yet: one per slot
    worker.ledger.set_average_run(0.0005)  # short jobs: up to the cap
    assert worker.prefetch_now() == 2 * PREFETCH_PER_SLOT
    worker.ledger.set_average_run(PREFETCH_WINDOW)  # each slot starts one job per window
    assert worker.prefetch_now() == 2
    worker.ledger.set_average_run(60.0)  # long jobs: hold none, so another worker can take them
    assert worker.prefetch_now() == 0
    fixed = TaskWorker(pool="inline", concurrency=2, prefetch=3)
    fixed.ledger.set_average_run(60.0)
    assert fixed.prefetch_now() == 3 and not fixed.adaptive_prefetch


class _Clock:
    """time.monotonic and time.sleep of the broker thread's module, by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.meanwhile = lambda: None  # what the main thread does while it sleeps

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.meanwhile()


def test_a_busy_worker_lets_its_round_trips_gather_up_to_the_start_record_bound(monkeypatch):
    # A fixed 4 ms between round trips made workers sharing the CPU write and claim a
    # few jobs per round trip; they now wait while every slot has a next job buffered,
    # but no longer than keeps each start written within START_RECORD_LAG.
    from django_tasks.worker import broker_thread
    from django_tasks.worker.ledger import START_RECORD_LAG

    for i in range(30):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=2, prefetch=16)
    worker.ledger.set_average_run(0.02)  # 20 ms jobs
    assert worker.exchange() == 18  # 2 slots + 16 buffered
    thread = worker.broker_thread
    clock = _Clock()
    monkeypatch.setattr(broker_thread, "time", clock)

    def gap(trip_time: float) -> float:
        clock.slept.clear()
        thread._last_trip, thread._trip_time = clock.now, trip_time
        thread._space_out()
        assert thread._last_trip == clock.now  # the next round trip starts now
        return sum(clock.slept)

    # 18 buffered jobs last ~170 ms: the round trip waits until the oldest start it
    # gathers would be written START_RECORD_LAG after it began, a round trip (as long
    # as they take on average) and 1 ms kept in hand.
    assert gap(0.001) == pytest.approx(START_RECORD_LAG - 0.002)
    assert gap(0.006) == pytest.approx(START_RECORD_LAG - 0.007)
    # Slow round trips: never less than ROUND_TRIP_SPACING.
    assert gap(START_RECORD_LAG - 0.003) == pytest.approx(broker_thread.ROUND_TRIP_SPACING)
    # A buffer about to run low: as long as it is expected to last less a round trip,
    # at least the spacing; then the slots have taken the jobs (all of them, here) and
    # it goes.
    clock.meanwhile = lambda: worker.ledger.release(())
    worker.ledger.set_average_run(0.001)
    assert gap(0.001) == pytest.approx((18 - 2 + 1) * 0.001 / 2 - 0.001)  # 17 jobs, 2 slots
    assert worker.ledger.snapshot().buffered == ()


def test_a_round_trip_wakes_the_main_thread_for_starts_it_records_only_by_their_outcomes():
    # Dispatch holds back starts while one older than START_RECORD_LAG is unwritten,
    # including starts the round trip in flight records through their jobs' outcomes
    # (the jobs finished before it was taken: no start record of their own). Its commit
    # must wake the main thread: it did not when that round trip claimed nothing and
    # had no start record left, and a busy worker slept until its poll timer (1 s
    # stalls, 1-3 per worker in each 4-worker drain of 20,000 jobs).
    import select
    import time

    for i in range(4):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=2, prefetch=2)
    assert worker.exchange() == 4
    assert worker.dispatch() == 2  # started; the inline pool ran them
    ledger = worker.ledger
    ledger.collect_and_start(worker.pool.collect(), may_start=False,
                             free_slots=lambda: 0, clock=time.monotonic())
    pending = ledger.snapshot()
    assert pending.unwritten_outcomes == 2 and len(pending.buffered) == 2
    worker.wake_main.drain()

    assert worker.exchange() == 0  # nothing left to claim; 2 outcomes written
    assert select.select([worker.wake_main.r], [], [], 0)[0], "the main thread was not woken"
    assert Job.objects.filter(status="SUCCESSFUL").count() == 2


def test_how_long_the_buffer_lasts_is_timed_by_its_starts_while_it_never_ran_dry():
    # Short jobs in the prefork pool wait behind the one their child runs, and their
    # time in the slot counted from then: the seconds per job in a slot over the slots
    # were twice the seconds between starts, and round trips began with the buffer
    # empty. The buffer's pace is timed by its starts, only while starts are not held.
    from django_tasks.worker.ledger_types import PACE_SAMPLE

    for i in range(80):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=2, prefetch=78)
    assert worker.exchange() == 80
    ledger = worker.ledger
    ledger.set_average_run(0.004)  # 2 ms a start by the old reckoning
    clock = 100.0

    def start_one(*, may_start: bool = True) -> int:
        started = ledger.collect_and_start((), may_start=may_start, free_slots=lambda: 1,
                                           clock=clock)
        ledger.add_claimed(ledger.take(claiming=False), [])  # its start written at once
        return len(started)

    assert start_one() == 1  # the measure begins
    assert ledger.stocked_for() == pytest.approx((79 - 2 + 1) * 0.004 / 2)
    for _ in range(PACE_SAMPLE):
        clock += 0.001  # a start a millisecond
        assert start_one() == 1
    left = 80 - 1 - PACE_SAMPLE
    assert ledger.stocked_for() == pytest.approx((left - 2 + 1) * 0.001)
    # Starts held back (a round trip late, the worker paused): that time is no pace.
    clock += 0.5
    assert start_one(may_start=False) == 0
    clock += 0.001
    assert start_one() == 1
    for _ in range(PACE_SAMPLE):
        clock += 0.001
        assert start_one() == 1
    left -= 1 + PACE_SAMPLE
    assert ledger.stocked_for() == pytest.approx((left - 2 + 1) * 0.001)


@pytest.mark.parametrize("ready, stopping, held", [(1, False, 0), (30, True, 0),
                                                   (30, False, 17)])
def test_a_worker_short_of_jobs_or_stopping_makes_its_round_trip_at_once(
        monkeypatch, ready, stopping, held):
    from django_tasks.worker import broker_thread
    from django_tasks.worker.ledger import Batch

    for i in range(ready):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=2, prefetch=16)
    worker.ledger.set_average_run(0.005)
    assert worker.exchange() == min(ready, 18)  # 1: fewer buffered jobs than slots
    if stopping:
        worker.stop()
    if held:  # buffered jobs waiting for their rate-limit slot cannot start now
        buffered = worker.ledger.snapshot().buffered[:held]
        worker.ledger.add_claimed(Batch("w", [], [], 0, 0), [],
                                  {job_id: 1e12 for job_id in buffered})
    clock = _Clock()
    monkeypatch.setattr(broker_thread, "time", clock)
    worker.broker_thread._last_trip = clock.now
    worker.broker_thread._space_out()
    assert clock.slept == []


@pytest.mark.rabbitmq_too
@pytest.mark.usefixtures("broker")
def test_jobs_a_busy_worker_could_not_start_within_the_hold_go_to_another_worker(monkeypatch):
    from django_tasks.worker import duties

    results = [tasks.add.enqueue(i, i) for i in range(5)]
    busy = TaskWorker(pool="inline", concurrency=1, worker_id="busy")
    busy.ledger.set_average_run(0.001)  # short jobs so far: it takes them all
    assert busy.exchange() == 5
    busy.run_duty("give back")  # claimed just now: nothing is overdue
    assert len(busy.snapshot().buffered) == 5
    monkeypatch.setattr(duties, "BUFFER_HOLD", 0.0)  # ... and now everything is
    busy.run_duty("give back")
    assert busy.snapshot().buffered == () and busy.snapshot().claimed == 0
    assert set(Job.objects.filter(pk__in=[r.id for r in results])
               .values_list("status", "attempts", "worker_id")) == {("READY", 0, "")}
    # Until one of its jobs finishes it claims only for its free slot, not a buffer
    # that would wait as long again.
    assert busy.prefetch_now() == 0 and busy.exchange() == 1
    other = TaskWorker(pool="inline", concurrency=2, worker_id="other")
    assert other.drain() == 4
    assert busy.drain() == 1
    jobs = Job.objects.filter(pk__in=[r.id for r in results])
    assert sorted(j.worker_ids[0] for j in jobs) == ["busy"] + ["other"] * 4
    assert {(j.status, j.attempts) for j in jobs} == {("SUCCESSFUL", 1)}
    assert busy.prefetch_now() > 0  # a job finished: adaptive again


def test_a_job_taken_back_from_a_busy_prefork_child_is_buffered_again_and_given_back(
        monkeypatch):
    """A short job sent ahead to a child whose job then runs long is taken back: it goes
    back to the worker's buffer, unstarted, where the give-back reaches it."""
    from django_tasks.worker import duties
    from django_tasks.worker.pools import prefork

    # Sent ahead while the job ahead is under 0.5 s old (5 ms by default: too tight for
    # a test on a loaded machine); taken back 20 ms into it, as always.
    monkeypatch.setattr(prefork, "PIPELINE_BELOW", 0.5)
    worker = TaskWorker(pool="prefork", concurrency=1, worker_id="w")
    worker.pool.start()
    try:
        def settle():
            worker.run_once()
            return worker.ledger.idle() and not worker.pool.running()

        for i in range(3):  # short jobs measured: it buffers and sends jobs ahead
            tasks.add.enqueue(i, i)
        assert wait_for(settle, interval=0.005)
        slow = tasks.sleep_then_return.enqueue(1.0)
        short = tasks.add.enqueue(1, 2)
        assert worker.exchange() == 2
        worker.dispatch()  # the slow one starts in the idle child
        worker.dispatch()  # the short one is sent ahead behind it
        assert set(worker.pool.running_ids()) == {slow.id, short.id}

        def taken_back():
            worker.dispatch()
            return worker.snapshot().buffered == (short.id,)

        assert wait_for(taken_back, timeout=5, interval=0.005)
        assert worker.snapshot().running == (slow.id,)
        assert worker.pool.running_ids() == [slow.id]
        row = Job.objects.get(pk=short.id)
        assert (row.status, row.attempts, row.started_at) == ("CLAIMED", 0, None)

        monkeypatch.setattr(duties, "BUFFER_HOLD", 0.0)
        worker.run_duty("give back")
        assert worker.snapshot().buffered == ()
        assert Job.objects.get(pk=short.id).status == "READY"
        assert TaskWorker(pool="inline", worker_id="other").drain() == 1
        assert wait_for(settle, interval=0.005)
    finally:
        worker.pool.stop(at_once=True)
    assert {(j.id, j.status, j.attempts, tuple(j.worker_ids))
            for j in Job.objects.filter(pk__in=[slow.id, short.id])} == {
        (uuid.UUID(slow.id), "SUCCESSFUL", 1, ("w",)),
        (uuid.UUID(short.id), "SUCCESSFUL", 1, ("other",))}


def test_jobs_not_given_back_stay_buffered_first_unless_the_worker_was_declared_dead(
        monkeypatch):
    from django_tasks.worker import duties

    monkeypatch.setattr(duties, "BUFFER_HOLD", 0.0)
    for i in range(4):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=1, worker_id="w")
    worker.ledger.set_average_run(0.001)
    assert worker.exchange() == 4
    before = worker.snapshot().buffered

    def down(messages):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(worker.broker, "give_back", down)
    with pytest.raises(DatabaseError):  # the duties thread retries it after the outage
        worker.run_duty("give back")
    assert worker.snapshot().buffered == before and worker.snapshot().claimed == 4
    # Declared dead meanwhile: the rescuer gave them back; they are not its to hold.
    holder, late = worker.ledger.overdue(0.0, 1e12)
    worker.ledger.reincarnate("w~2")
    worker.ledger.restore(holder, late)
    assert worker.snapshot().buffered == ()


def test_jobs_held_for_their_rate_limit_slot_or_by_a_fixed_prefetch_are_not_overdue():
    from django_tasks.worker.ledger import Batch

    for i in range(3):
        tasks.add.enqueue(i, i)
    fixed = TaskWorker(pool="inline", concurrency=1, prefetch=2)
    assert fixed.exchange() == 3
    assert fixed.ledger.overdue(0.0, 1e12)[1] == []  # it holds what it was told to
    not_started, _ = fixed.ledger.release(())
    assert broker.give_back(not_started) == 3
    worker = TaskWorker(pool="inline", concurrency=1)
    worker.ledger.set_average_run(0.001)
    assert worker.exchange() == 3
    held, *others = worker.snapshot().buffered
    worker.ledger.add_claimed(Batch("w", [], [], 0, 0), [], {held: 1e12})
    _, late = worker.ledger.overdue(0.0, 1e12)
    assert [m.id for m in late] == others
    assert worker.snapshot().buffered == (held,)


def test_adaptive_prefetch_learns_from_outcomes():
    for i in range(30):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=1)
    assert worker.exchange() == 2  # one slot + one prefetched, before any measurement
    worker.drain()
    assert worker.snapshot().avg_run is not None and worker.prefetch_now() > 1


def test_a_snapshot_is_what_the_worker_holds_and_did():
    results = [tasks.add.enqueue(i, i) for i in range(3)]
    worker = TaskWorker(pool="inline", worker_id="w", prefetch=2)
    assert worker.exchange() == 3
    before = worker.snapshot()
    assert (before.holder, before.buffered, before.running, before.claimed) == (
        "w", tuple(r.id for r in results), (), 3)
    assert worker.drain() == 3
    after = worker.snapshot()
    assert (after.buffered, after.running, after.unrecorded_starts, after.unwritten_outcomes,
            after.claimed, after.completed, after.drained) == ((), (), 0, 0, 3, 3, True)
    assert before.buffered == tuple(r.id for r in results)  # a copy: it did not change
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.claimed = 0


def test_the_phase_only_moves_forward_and_run_duty_names_the_duties():
    worker = TaskWorker(pool="inline")
    assert worker.phase is Phase.RUNNING
    worker.abort()  # a second signal
    assert worker.phase is Phase.ABORTING
    worker.stop()  # a later, lesser request changes nothing
    assert worker.phase is Phase.ABORTING
    worker.shutdown(at_once=True)
    assert worker.phase is Phase.STOPPED and worker.stop_duties.is_set()
    worker.abort()
    assert worker.phase is Phase.STOPPED
    with pytest.raises(ValueError, match=r"^No duty 'cancel'; this worker's duties are "
                                         r"heartbeat, rescue, cancel poll, "):
        worker.run_duty("cancel")


def test_a_bug_in_the_broker_thread_stops_the_worker_loudly(monkeypatch, caplog):
    tasks.add.enqueue(1, 1)

    def bug(*args, **kwargs):
        raise KeyError("a bug, not an outage")

    monkeypatch.setattr(broker, "exchange", bug)
    worker = TaskWorker(pool="inline", burst=True)
    worker.run()  # returns instead of heart-beating forever with nothing done
    assert worker.crashed
    assert any("Bug in the worker's broker thread" in r.getMessage() for r in caplog.records)
    assert Worker.objects.get(pk=worker.worker_id).stopped_at is not None


def test_liveness_is_judged_by_the_databases_clock(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite is on one host: its clock is the host's")
    register("skewed")
    register("rescuer")
    # This host's clock runs an hour behind: heartbeats and the rescuer's judgement
    # both use the database's, so a live worker is not declared dead.
    behind = timezone.now() - timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: behind)
    assert store.heartbeat("skewed")
    beat = Worker.objects.get(pk="skewed").last_heartbeat_at
    assert beat > behind + timedelta(minutes=59)
    assert store.rescue_orphans("rescuer") == []
    assert Worker.objects.get(pk="skewed").stopped_at is None


def test_a_fixed_worker_id_can_be_taken_over_only_from_a_dead_worker(tmp_path):
    from django_tasks.exceptions import WorkerIdInUse

    register("fixed")
    with pytest.raises(WorkerIdInUse, match="A running worker is registered as 'fixed'"):
        register("fixed")  # alive: refused
    result = rt.record.enqueue(str(tmp_path / "runs"))
    start("fixed", claim("fixed"))
    # kill -9 and a restart under the same --worker-id, with no other worker to notice:
    # once silent past WORKER_TIMEOUT, the new process takes the id over and rescues.
    Worker.objects.filter(pk="fixed").update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=60))
    register("fixed")
    worker = Worker.objects.get(pk="fixed")
    assert worker.stopped_at is None and worker.stop_reason == ""
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.lease, job.errors[-1]["exception_class_path"]) == (
        "READY", "", "django_tasks.exceptions.WorkerLost")


def test_a_retry_is_due_by_the_databases_clock(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite is on one host: its clock is the host's")
    result = tasks.retry_in_a_minute.enqueue()  # raises context.retry(countdown=60)
    # The worker's host clock runs an hour behind the database's.
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - timedelta(hours=1))
    TaskWorker(pool="inline").drain()
    monkeypatch.undo()
    job = Job.objects.get(pk=result.id)
    assert job.status == "READY" and job.attempts == 1
    due_in = (job.available_at - store.now()).total_seconds()
    assert 55 < due_in <= 60, due_in  # not an hour early
