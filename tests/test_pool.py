"""Execution pools driven directly with hand-built messages: deaths, limits, recycling, stop."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime
from multiprocessing.connection import wait
from pathlib import Path

import pytest
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from django_tasks.jobs.messages import Message
from django_tasks.worker.pools import PreforkPool, ThreadPool, make_pool

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
WORKER_LOST = "django_tasks.exceptions.WorkerLost"
TIME_LIMIT = "django_tasks.exceptions.TimeLimitExceeded"
SOFT_TIME_LIMIT = "django_tasks.exceptions.SoftTimeLimitExceeded"


def make_message(name, *args, attempts=1, max_attempts=1, **kwargs):
    """A message as the broker's claim() hands it to the worker."""
    now = timezone.now().isoformat()
    return Message(
        id=str(uuid.uuid4()), lease="lease", task_path=f"tests.tasks.{name}",
        queue_name="default", priority=0, backend="default", args=list(args), kwargs=kwargs,
        attempt=attempts, max_attempts=max_attempts, worker_ids=["w1"], errors=[],
        enqueued_at=now, started_at=now, run_after=None, available_at=now,
    )


def wait_outcomes(pool, count=1, timeout=10.0):
    """Sleep on the pool as the worker loop does until ``count`` outcomes are collected."""
    deadline = time.monotonic() + timeout
    outcomes = []
    while len(outcomes) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(outcomes)} of {count} outcome(s) in {timeout}s")
        due = pool.next_deadline()
        wait(pool.waitables(), remaining if due is None else min(remaining, due))
        outcomes.extend(pool.collect())
    return outcomes


def run(pool, message, timeout=10.0):
    pool.submit(message)
    (outcome,) = wait_outcomes(pool, 1, timeout)
    assert outcome.id == message.id
    return outcome


def gone(pid):
    """True once ``pid`` has exited (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def poll_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def pools():
    """Build started pools; each is stopped (killing leftovers) after the test."""
    made = []

    def build(size=1, **options):
        pool = PreforkPool(size, "w1", **options)
        pool.start()
        made.append(pool)
        return pool

    yield build
    for pool in made:
        pool.stop(at_once=True)


# -- child death ---------------------------------------------------------------------------


def test_child_exit_is_a_worker_lost_outcome_retried_then_failed_and_the_slot_replaced(pools):
    pool = pools(1)
    outcome = run(pool, make_message("exit_with", 3, attempts=1, max_attempts=2))
    assert outcome.status == "READY"  # attempt 1 of 2: retried (backoff=0)
    assert outcome.finished_at is None
    assert datetime.fromisoformat(outcome.retry_at) <= timezone.now()
    error = outcome.error
    assert error["exception_class_path"] == WORKER_LOST
    assert "The process running the job died" in error["message"]
    assert "exit code 3" in error["message"]
    assert error["attempt"] == 1 and error["worker_id"] == "w1"

    outcome = run(pool, make_message("exit_with", 3, attempts=2, max_attempts=2))
    assert outcome.status == "FAILED"
    assert outcome.finished_at is not None and outcome.retry_at is None
    assert outcome.error["attempt"] == 2

    # the slot got a new child, which runs the next job
    assert pool.free_slots() == 1
    assert run(pool, make_message("getpid")).status == "SUCCESSFUL"


def test_child_death_follows_retry_on(pools):
    pool = pools(1)
    outcome = run(pool, make_message("exit_not_retryable", 4, attempts=1, max_attempts=3))
    assert outcome.status == "FAILED"  # retry_on=(ConnectionError,): WorkerLost is not one
    assert "exit code 4" in outcome.error["message"]


def test_segfault_names_the_signal(pools):
    pool = pools(1)
    outcome = run(pool, make_message("segfault"))
    assert outcome.status == "FAILED"
    assert outcome.error["exception_class_path"] == WORKER_LOST
    assert "killed by signal SIGSEGV" in outcome.error["message"]
    assert run(pool, make_message("getpid")).status == "SUCCESSFUL"


def test_kill_9_of_a_busy_child_wakes_the_supervisor(pools):
    pool = pools(2)
    pid = run(pool, make_message("getpid")).return_value
    busy = make_message("sleep_then_return", 30)
    pool.submit(busy)
    assert pool.running_ids() == [busy.id]
    # The busy job went to the first free slot, the child whose pid we know.
    os.kill(pid, 9)
    started = time.monotonic()
    assert wait(pool.waitables(), 5), "a child's death must wake wait()"
    assert time.monotonic() - started < 2
    outcome = wait_outcomes(pool)[0]
    assert outcome.id == busy.id
    assert "SIGKILL" in outcome.error["message"]
    assert pool.running_ids() == [] and pool.free_slots() == 2


def test_an_idle_child_that_dies_is_replaced(pools, caplog):
    pool = pools(1)
    pid = run(pool, make_message("getpid")).return_value
    os.kill(pid, 9)
    assert wait(pool.waitables(), 5), "an idle child's death must wake wait() too"
    assert pool.collect() == []
    assert "died while idle" in caplog.text
    new_pid = run(pool, make_message("getpid")).return_value
    assert new_pid != pid


# -- time limits ---------------------------------------------------------------------------


def test_hard_time_limit_kills_a_busy_loop_and_retries(pools):
    pool = pools(1)
    message = make_message("spin", attempts=1, max_attempts=2)  # time_limit=0.5
    started = time.monotonic()
    pool.submit(message)
    assert 0 < pool.next_deadline() <= 0.5
    (outcome,) = wait_outcomes(pool, timeout=5)
    assert time.monotonic() - started < 0.5 + 1
    assert outcome.status == "READY"
    assert outcome.error["exception_class_path"] == TIME_LIMIT
    assert "time_limit (0.5 s)" in outcome.error["message"]
    assert pool.next_deadline() is None
    assert run(pool, make_message("getpid")).status == "SUCCESSFUL"


def test_hard_time_limit_kills_a_task_that_ignores_the_soft_one(pools):
    pool = pools(1)
    started = time.monotonic()
    outcome = run(pool, make_message("sleep_ignoring_alarm"), timeout=5)  # time_limit=0.6
    assert time.monotonic() - started < 0.6 + 1
    assert outcome.status == "FAILED"
    assert outcome.error["exception_class_path"] == TIME_LIMIT


def test_soft_time_limit_raises_inside_the_task(pools, tmp_path):
    pool = pools(1)
    pid = run(pool, make_message("getpid")).return_value
    marker = tmp_path / "cleanup"
    started = time.monotonic()
    outcome = run(pool, make_message("overruns_soft_limit", str(marker)))
    assert time.monotonic() - started < 3  # interrupted at 0.3 s, not the 10 s sleep
    assert outcome.status == "FAILED"
    assert outcome.error["exception_class_path"] == SOFT_TIME_LIMIT
    assert marker.read_text() == "cleaned up"  # its finally ran
    assert run(pool, make_message("getpid")).return_value == pid  # the child lives on


def test_a_task_may_catch_its_soft_time_limit(pools):
    pool = pools(1)
    outcome = run(pool, make_message("catches_soft_limit"))
    assert outcome.status == "SUCCESSFUL"
    assert outcome.return_value == "cleaned up"


def test_soft_time_limit_is_disarmed_after_the_task(pools):
    pool = pools(1)
    run(pool, make_message("quick_with_soft_limit"))  # soft_time_limit=0.2, returns at once
    outcome = run(pool, make_message("sleep_then_return", 0.5))  # no limit: must not be hit
    assert outcome.status == "SUCCESSFUL", outcome.error


# -- recycling -----------------------------------------------------------------------------


def test_max_tasks_per_child_recycles(pools, caplog):
    caplog.set_level(logging.INFO, logger="django_tasks")
    pool = pools(1, max_tasks_per_child=2)
    pids = [run(pool, make_message("getpid")).return_value for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert "max_tasks_per_child=2 reached" in caplog.text


def test_several_jobs_in_flight_all_come_back_when_children_recycle(pools):
    pool = pools(3, max_tasks_per_child=1)
    messages = [make_message("getpid") for _ in range(3)]
    for message in messages:
        pool.submit(message)
    outcomes = wait_outcomes(pool, 3)
    assert {o.id for o in outcomes} == {m.id for m in messages}
    assert len({o.return_value for o in outcomes}) == 3
    assert pool.free_slots() == 3
    assert run(pool, make_message("getpid")).return_value not in {
        o.return_value for o in outcomes}


def current_rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not LINUX, reason="reads /proc for the baseline")
def test_max_memory_per_child_recycles(pools):
    # A fresh child's peak RSS starts near the supervisor's current RSS.
    pool = pools(1, max_memory_per_child=current_rss_kib() + 100 * 1024)
    pid = run(pool, make_message("getpid")).return_value
    assert run(pool, make_message("getpid")).return_value == pid  # under the limit
    assert run(pool, make_message("allocate", 200)).return_value == 200
    assert run(pool, make_message("getpid")).return_value != pid


def test_pool_options_are_checked():
    with pytest.raises(ValueError, match="max_tasks_per_child must be a whole number"):
        PreforkPool(1, "w", max_tasks_per_child=0)
    with pytest.raises(ValueError, match="only apply to the prefork pool"):
        make_pool("threads", 1, "w", max_memory_per_child=1000)
    assert make_pool("threads", 1, "w", max_tasks_per_child=None).name == "threads"
    assert make_pool("prefork", 1, "w", max_tasks_per_child=3).max_tasks_per_child == 3


# -- pipelining short jobs ------------------------------------------------------------------


def warm(pool, n=30):
    """Run short jobs until the pool's average run (from the first, which imports the
    task) is below PIPELINE_BELOW."""
    for _ in range(n):
        assert run(pool, make_message("getpid")).status == "SUCCESSFUL"


def submit_behind(pool, first, queued):
    """Submit ``first`` to the pool's one idle child and ``queued`` behind it."""
    pool.submit(first)
    pool.submit(queued)  # refused with "No free slot" if it could not be queued
    assert pool.running() == 2


def test_a_busy_child_is_sent_its_next_short_job(pools):
    pool = pools(1)
    warm(pool)
    assert pool.free_slots() == 1
    first, second = make_message("sleep_then_return", 0.002), make_message("getpid")
    pool.submit(first)
    assert pool.free_slots() == 1  # the busy child may hold one more
    pool.submit(second)
    assert pool.free_slots() == 0
    assert pool.running() == 2 and set(pool.running_ids()) == {first.id, second.id}
    outcomes = wait_outcomes(pool, 2)
    assert [o.id for o in outcomes] == [first.id, second.id]
    assert all(o.status == "SUCCESSFUL" for o in outcomes)
    assert pool.running() == 0 and pool.free_slots() == 1


def test_nothing_is_queued_behind_long_jobs(pools):
    pool = pools(1)
    assert pool.free_slots() == 1
    run(pool, make_message("sleep_then_return", 0.1))  # the jobs seen so far are long
    pool.submit(make_message("getpid"))
    assert pool.free_slots() == 0
    wait_outcomes(pool)


def test_a_job_queued_behind_one_that_runs_long_is_taken_back_and_runs_elsewhere(pools):
    pool = pools(2)
    warm(pool)
    shorter, longer = (make_message("sleep_then_return", 0.4),
                       make_message("sleep_then_return", 2.0))
    pool.submit(shorter)
    pool.submit(longer)
    queued = make_message("getpid")
    assert pool.free_slots() >= 1
    pool.submit(queued)  # behind the job that started last: the long one
    outcomes = wait_outcomes(pool, 3)
    # Taken back RECALL_AFTER into the long job, it ran when the shorter one's slot freed.
    assert [o.id for o in outcomes] == [shorter.id, queued.id, longer.id]
    assert all(o.status == "SUCCESSFUL" for o in outcomes)
    # The child that held it skipped it: it runs what it is sent next, once each.
    for _ in range(4):
        assert run(pool, make_message("getpid")).status == "SUCCESSFUL"
    time.sleep(0.2)
    assert pool.collect() == [] and pool.running() == 0


def test_a_job_queued_behind_one_whose_child_dies_runs_in_the_new_child(pools):
    pool = pools(1)
    warm(pool)
    dies, queued = make_message("exit_with", 3), make_message("getpid")
    submit_behind(pool, dies, queued)
    outcomes = wait_outcomes(pool, 2)
    assert [o.id for o in outcomes] == [dies.id, queued.id]
    assert outcomes[0].error["exception_class_path"] == WORKER_LOST
    assert outcomes[1].status == "SUCCESSFUL"


def test_a_job_queued_behind_a_retiring_child_runs_in_the_next_one(pools):
    pool = pools(1, max_tasks_per_child=31)
    warm(pool)  # 30 jobs: the next one is the child's last
    last, queued = make_message("getpid"), make_message("getpid")
    submit_behind(pool, last, queued)
    outcomes = wait_outcomes(pool, 2)
    assert [o.id for o in outcomes] == [last.id, queued.id]
    assert outcomes[0].return_value != outcomes[1].return_value


def test_outcomes_a_retired_child_sent_before_it_was_looked_at_are_all_kept(pools):
    pool = pools(1, max_tasks_per_child=33)
    warm(pool)
    pid = run(pool, make_message("getpid")).return_value  # 31 jobs: two to go
    last_but_one, last = make_message("getpid"), make_message("getpid")
    submit_behind(pool, last_but_one, last)
    assert poll_until(lambda: gone(pid))  # ran both and exited before we looked
    outcomes = wait_outcomes(pool, 2)
    assert [(o.id, o.status, o.return_value) for o in outcomes] == [
        (last_but_one.id, "SUCCESSFUL", pid), (last.id, "SUCCESSFUL", pid)]
    assert run(pool, make_message("getpid")).return_value != pid


def test_a_queued_job_asked_to_cancel_gets_its_grace_from_when_it_starts(pools):
    pool = pools(1)
    warm(pool)
    first, queued = make_message("sleep_then_return", 0.002), make_message(
        "sleep_then_return", 30)
    submit_behind(pool, first, queued)
    assert pool.cancel(queued.id, 0.3)
    outcomes = wait_outcomes(pool, 2)
    assert outcomes[0].status == "SUCCESSFUL"
    assert "cancel_grace" in outcomes[1].error["message"]


def test_a_job_waiting_in_the_pool_has_its_start_recorded_when_it_begins():
    """The ledger records a start only for jobs that start at once; one that waits
    behind a busy child's job is recorded when the pool says it began, and one that
    never did is given back at shutdown (not counted as an attempt)."""
    from django_tasks.worker.ledger import Ledger

    ledger = Ledger("w1", concurrency=1, prefetch=0)
    first, behind, never = (make_message("getpid") for _ in range(3))
    ledger.add_claimed(ledger.take(claiming=True), [first, behind, never])
    jobs = ledger.collect_and_start([], may_start=True, free_slots=lambda: 3, clock=1.0,
                                    idle_slots=lambda: 1)
    assert [j.id for j in jobs] == [first.id, behind.id, never.id]
    assert [s.id for s in ledger.take(claiming=False).starts] == [first.id]
    ledger.collect_and_start([], may_start=True, free_slots=lambda: 0, clock=1.1,
                             began=[behind.id])
    assert [s.id for s in ledger.take(claiming=False).starts] == [behind.id]
    not_started, interrupted = ledger.release([first.id, behind.id, never.id])
    assert [m.id for m in not_started] == [never.id]
    assert interrupted == [first.id, behind.id]


def test_stop_waits_for_queued_jobs_too(pools):
    pool = pools(1)
    warm(pool)
    first, queued = make_message("sleep_then_return", 0.002), make_message("getpid")
    submit_behind(pool, first, queued)
    assert pool.stop() == []
    assert [o.id for o in pool.collect()] == [first.id, queued.id]


def test_a_stop_that_kills_a_child_keeps_what_it_sent_and_says_what_it_went_on_to(pools):
    from django_tasks.worker.pools.child import STARTED

    pool = pools(1)
    warm(pool)
    first, queued = make_message("getpid"), make_message("sleep_then_return", 30)
    submit_behind(pool, first, queued)
    slot = pool._slots[0]
    assert poll_until(lambda: slot.shared[STARTED] == slot.sent)  # it runs ``queued``
    assert pool.stop(at_once=True) == [queued.id]  # killed while running
    assert [o.id for o in pool.collect()] == [first.id]  # sent before the kill: kept
    assert pool.began() == [queued.id]  # so its start is recorded: an attempt


# -- stop ----------------------------------------------------------------------------------


def test_stop_with_a_timeout_returns_what_did_not_finish(pools):
    pool = pools(2)
    slow, quick = make_message("sleep_then_return", 30), make_message("sleep_then_return", 0.1)
    pool.submit(slow)
    pool.submit(quick)
    started = time.monotonic()
    assert pool.stop(timeout=0.5) == [slow.id]
    assert time.monotonic() - started < 3
    # the job that finished during the stop is still reported; the killed one is not
    (outcome,) = pool.collect()
    assert outcome.id == quick.id and outcome.status == "SUCCESSFUL"
    assert pool.collect() == []
    assert pool.free_slots() == 0 and pool.running_ids() == []
    with pytest.raises(RuntimeError, match="stopped"):
        pool.submit(make_message("getpid"))


def test_stop_now_kills_at_once(pools):
    pool = pools(1)
    pid = run(pool, make_message("getpid")).return_value
    slow = make_message("sleep_then_return", 30)
    pool.submit(slow)
    started = time.monotonic()
    assert pool.stop(at_once=True) == [slow.id]
    assert time.monotonic() - started < 3
    assert pool.collect() == []
    assert gone(pid)


def test_stop_without_timeout_waits_for_running_jobs(pools):
    pool = pools(2)
    job = make_message("sleep_then_return", 0.3)
    pool.submit(job)
    assert pool.stop() == []
    assert [o.id for o in pool.collect()] == [job.id]


def test_thread_pool_stop_abandons_what_is_still_running(caplog):
    pool = ThreadPool(1, "w1")
    pool.start()
    slow = make_message("sleep_then_return", 1.0)
    pool.submit(slow)
    started = time.monotonic()
    assert pool.stop(timeout=0.2) == [slow.id]
    assert time.monotonic() - started < 1.0
    assert pool.running_ids() == []
    assert poll_until(lambda: "finished after the pool stopped" in caplog.text)
    assert pool.collect() == []  # the abandoned job's late outcome is not reported


def test_thread_pool_warns_once_about_time_limits(caplog):
    pool = ThreadPool(1, "w1")
    pool.start()
    try:
        for _ in range(2):
            assert run(pool, make_message("quick_with_soft_limit")).status == "SUCCESSFUL"
    finally:
        pool.stop()
    warnings = [r for r in caplog.records if "cannot enforce" in r.getMessage()]
    assert len(warnings) == 1
    assert "soft_time_limit=0.2" in warnings[0].getMessage()


# -- the supervisor's death and its connections --------------------------------------------

SUPERVISOR = textwrap.dedent("""
    import json, multiprocessing, sys, time
    import django
    django.setup()
    from tests.test_pool import make_message
    from django_tasks.worker.pools import PreforkPool
    pool = PreforkPool(2, "w1")
    pool.start()
    pool.submit(make_message("sleep_then_return", 60))
    print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_killed_supervisor():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        children = json.loads(proc.stdout.readline())
        assert len(children) == 2
        assert not any(gone(pid) for pid in children)
        proc.kill()
        proc.wait(5)
        assert poll_until(lambda: all(gone(pid) for pid in children), timeout=5), [
            pid for pid in children if not gone(pid)]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.django_db(transaction=True)
def test_forking_replacements_leaves_the_supervisors_connections_alone(pools, recwarn):
    from django.db import connection, connections

    def backend_pid(conn):
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()" if conn.vendor == "postgresql"
                           else "SELECT 1")
            return cursor.fetchone()[0]

    # A second thread with its own open session, like the worker's heartbeat thread.
    ask, answer = threading.Event(), []
    done = threading.Event()

    def other_thread():
        answer.append(backend_pid(connections["default"]))
        ask.wait(10)
        answer.append(backend_pid(connections["default"]))
        connections.close_all()
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert poll_until(lambda: len(answer) == 1)
        backend_pid(connection)  # the main thread's session is open too
        pool = pools(1)
        assert run(pool, make_message("exit_with", 3)).error["exception_class_path"] == (
            WORKER_LOST)  # the replacement was forked with both sessions open
        child_session = run(pool, make_message("db_session")).return_value
        main_session = backend_pid(connection)
        pool.stop()
    finally:
        ask.set()
        assert done.wait(10)
        thread.join()
    # Both sessions survived the forks and the children's exits.
    assert len(answer) == 2 and answer[0] == answer[1]
    if connection.vendor == "postgresql":
        assert child_session not in {answer[0], main_session}
    fork_warnings = [w for w in recwarn.list if "fork()" in str(w.message)]
    assert fork_warnings == []


# -- Task options --------------------------------------------------------------------------


def f():
    pass


def test_time_limit_options_are_validated():
    from django.tasks import task

    for bad in (0, -1, float("inf"), "10", True):
        with pytest.raises(InvalidTask, match="time_limit must be a number of seconds > 0"):
            task(time_limit=bad)(f)
        with pytest.raises(InvalidTask, match="soft_time_limit must be a number of seconds"):
            task(soft_time_limit=bad)(f)
    with pytest.raises(InvalidTask, match=r"soft_time_limit \(5\) must be less than time_limit"):
        task(soft_time_limit=5, time_limit=5)(f)
    ok = task(time_limit=10, soft_time_limit=9.5)(f)
    assert (ok.time_limit, ok.soft_time_limit) == (10, 9.5)
    assert task()(f).time_limit is None


def test_a_paced_job_handed_back_by_the_pool_gets_a_new_slot():
    """A rate-limited job sent to wait behind a busy child used its slot; if the pool
    hands it back unstarted, starting it at the next free slot could crowd a window, so
    it waits for a new slot (the broker thread's repace). A job without a limit, or one
    that began, is not affected."""
    from django_tasks.worker.ledger import Ledger

    ledger = Ledger("w1", concurrency=2, prefetch=0)
    first, paced, plain, began = (make_message("getpid") for _ in range(4))
    ledger.add_claimed(ledger.take(claiming=True), [first, paced, plain, began],
                       hold={paced.id: (0.5, 10.0), began.id: (0.5, 10.0)})
    # One idle child: ``first`` starts, the three others wait in the pool.
    jobs = ledger.collect_and_start([], may_start=True, free_slots=lambda: 4, clock=1.0,
                                    idle_slots=lambda: 1)
    assert [j.id for j in jobs] == [first.id, paced.id, plain.id, began.id]
    assert ledger.late() == [] and ledger.next_start() is None
    ledger.collect_and_start([], may_start=True, free_slots=lambda: 0, clock=1.1,
                             began=[began.id], returned=[paced, plain])
    assert [m.id for m in ledger.late()] == [paced.id]
    assert ledger.next_start() == float("inf")  # held until the broker thread reserves
    ledger.add_claimed(ledger.take(claiming=False), [])  # the starts are written
    # No free slot starts it meanwhile; the job without a limit starts.
    jobs = ledger.collect_and_start([], may_start=True, free_slots=lambda: 2, clock=1.2)
    assert [j.id for j in jobs] == [plain.id]
