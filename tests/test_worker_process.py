"""Real `manage.py worker` processes against the test database."""

import signal

import pytest
from django.db import connection

from django_tasks.models import Job, Worker
from tests import tasks
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_burst_worker_runs_everything_and_exits(pool, broker):
    results = [tasks.add.enqueue(i, i) for i in range(50)]
    failing = tasks.returns_set.enqueue()
    proc = start_worker("--burst", "-c", "2", "--pool", pool)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    for i, r in enumerate(results):
        r.refresh()
        assert r.return_value == 2 * i
    assert Job.objects.get(pk=failing.id).status == "FAILED"
    # one INFO line per start and per finish, with id, task, queue, attempt and duration
    line = next(x for x in out.splitlines() if results[0].id in x and "SUCCESSFUL" in x)
    assert "task=tests.tasks.add" in line and "queue=default" in line
    assert "attempt=1/1" in line and "duration=" in line
    assert len({tuple(Job.objects.get(pk=r.id).worker_ids) for r in results}) == 1
    worker = Worker.objects.get()
    assert worker.pool == pool and worker.stopped_at is not None


def test_max_tasks():
    for i in range(5):
        tasks.add.enqueue(i, 1)
    # A poll timer of 30 s: the worker exits once the last outcome is written, not
    # when the main thread next wakes by itself.
    proc = start_worker("--max-tasks", "3", "-c", "1",
                        env={"DJANGO_TASKS_TEST_POLL_INTERVAL": "30"})
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert Job.objects.filter(status="SUCCESSFUL").count() == 3
    assert Job.objects.filter(status="READY").count() == 2


def test_sigterm_finishes_running_jobs_then_exits_zero(tmp_path, broker):
    marker = tmp_path / "done"
    slow = [tasks.sleep_then_return.enqueue(1.0, str(marker)) for _ in range(2)]
    proc = start_worker("-c", "2")
    assert wait_for(lambda: Job.objects.filter(status="RUNNING").count() == 2)
    later = tasks.add.enqueue(1, 2)  # must not be started after SIGTERM
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    for r in slow:
        r.refresh()
        assert r.return_value == 1.0
    assert len(marker.read_text().splitlines()) == 2
    assert Job.objects.get(pk=later.id).status == "READY"


def test_unknown_queue_is_a_clear_command_error():
    proc = start_worker("--burst", "-Q", "nope")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "nope" in out and "QUEUES" in out


def test_postgres_notify_arrives_on_commit_only():
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    import select

    from django.db import transaction
    from django.tasks import default_task_backend

    listener = default_task_backend.broker.wake_source(["default"])
    other = default_task_backend.broker.wake_source(["emails"])
    try:
        with transaction.atomic():
            tasks.add.enqueue(1, 1)
            tasks.add.enqueue(2, 2)
            assert select.select([listener], [], [], 0.3)[0] == []  # nothing before commit
        assert select.select([listener], [], [], 5)[0] == [listener]
        assert listener.drain() == 1  # one per transaction and queue, not per job
        # A worker of other queues is not woken for jobs it would not take.
        assert select.select([other], [], [], 0.3)[0] == []
        tasks.send_email.enqueue("a@example.com")
        assert select.select([other], [], [], 5)[0] == [other]
    finally:
        listener.close()
        other.close()


def test_two_workers_never_run_a_job_twice(broker):
    results = [tasks.add.enqueue(i, 0) for i in range(300)]
    procs = [start_worker("--burst", "-c", "2", "--worker-id", f"w{n}") for n in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    jobs = Job.objects.filter(pk__in=[r.id for r in results])
    assert jobs.filter(status="SUCCESSFUL").count() == 300
    assert {j.attempts for j in jobs} == {1}
    assert all(len(j.worker_ids) == 1 for j in jobs)
    starts = sum(o.count("started: task=tests.tasks.add") for o in outs)
    assert starts == 300  # each job started exactly once across both workers


@pytest.mark.postgres_only
def test_a_job_whose_row_is_locked_does_not_hold_up_the_others(broker):
    """Application code holding a job's row lock (select_for_update, an admin action, a
    migration) delays that job only: the worker runs the next one at once, and the
    locked one once the lock is gone."""
    from tests.test_broker_contract import _hold_row_lock

    locked = tasks.add.enqueue(1, 1)
    release = _hold_row_lock(locked.id)
    try:
        free = tasks.add.enqueue(2, 2)
        proc = start_worker("-c", "2")
        assert wait_for(lambda: Job.objects.get(pk=free.id).status == "SUCCESSFUL",
                        timeout=15)
        assert Job.objects.get(pk=locked.id).status == "READY"
    finally:
        release()
    assert wait_for(lambda: Job.objects.get(pk=locked.id).status == "SUCCESSFUL", timeout=15)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_jobs_buffered_behind_a_long_one_go_back_to_an_idle_worker(broker):
    """A worker that measured short jobs prefetches many; when a long one then takes its
    only slot, the jobs buffered behind it are given back after BUFFER_HOLD (1 s) and an
    idle worker runs them, long before that slot frees."""
    from django.db import transaction

    warm = [tasks.add.enqueue(i, 0) for i in range(20)]
    # Threads: a prefork child may also have been sent one of the short jobs, which then
    # waits in that worker's pool for its next free slot (docs/worker.md).
    busy = start_worker("-c", "1", "--pool", "threads", "--worker-id", "busy")
    idle = None
    try:
        assert wait_for(lambda: Job.objects.filter(pk__in=[r.id for r in warm],
                                                   status="SUCCESSFUL").count() == 20)
        with transaction.atomic():  # one claim takes them all, the long one first
            long = tasks.sleep_then_return.using(priority=10).enqueue(10)
            short = [tasks.add.enqueue(i, 1) for i in range(5)]
        ids = [r.id for r in short]
        assert wait_for(lambda: Job.objects.get(pk=long.id).status == "RUNNING"
                        and Job.objects.filter(pk__in=ids, worker_id="busy").count() == 5,
                        timeout=10)
        idle = start_worker("-c", "1", "--worker-id", "idle")
        assert wait_for(lambda: Job.objects.filter(pk__in=ids, status="SUCCESSFUL").count()
                        == 5, timeout=8)
        assert Job.objects.get(pk=long.id).status == "RUNNING"  # it runs 10 s
        jobs = Job.objects.filter(pk__in=ids)
        assert {(j.attempts, tuple(j.worker_ids)) for j in jobs} == {(1, ("idle",))}
    finally:
        busy.kill()  # not worth waiting for the long job
        busy.communicate(timeout=60)
        if idle is not None:
            idle.send_signal(signal.SIGTERM)
            out, _ = idle.communicate(timeout=60)
            assert idle.returncode == 0, out
