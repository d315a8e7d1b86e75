"""The backend and the worker loop against the configured database (SQLite or PostgreSQL)."""

from dataclasses import replace
from datetime import timedelta

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, default_task_backend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from django_tasks import ArgumentNotSerializable, JobError, ResultTimeout, TaskFailed
from django_tasks.jobs.messages import Outcome
from django_tasks.models import Job
from django_tasks.worker import TaskWorker
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)
broker = default_task_backend.broker
store = default_task_backend.store


@pytest.fixture(autouse=True)
def _current_backend():
    """A TASKS override (the Redis broker's tests) makes new backend instances: bind
    this module's shortcuts to the current ones."""
    global broker, store
    broker, store = default_task_backend.broker, default_task_backend.store


def drain(now=None, **kwargs):
    worker = TaskWorker(pool="inline", concurrency=4, **kwargs)
    worker.drain(now)
    return worker


def test_backend_is_ours_with_all_capabilities():
    for flag in ("supports_defer", "supports_priority", "supports_get_result",
                 "supports_async_task"):
        assert getattr(default_task_backend, flag) is True


def test_enqueue_run_and_read_result():
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1 and len(result.worker_ids) == 1
    assert result.started_at and result.finished_at >= result.started_at
    same = default_task_backend.get_result(result.id)
    assert same.return_value == 5 and same.task.func is tasks.add.func
    assert result.wait(timeout=1) == 5 and result.get() == 5


def test_delay_and_apply_async():
    r1 = tasks.add.delay(1, 1)
    r2 = tasks.add.apply_async(args=[1], kwargs={"y": 2}, queue="emails", priority=5)
    r3 = tasks.add.apply_async(args=[1, 1], countdown=60)
    job2 = Job.objects.get(pk=r2.id)
    assert (job2.queue_name, job2.priority, job2.kwargs) == ("emails", 5, {"y": 2})
    job3 = Job.objects.get(pk=r3.id)
    assert job3.run_after is not None and job3.available_at > timezone.now() + timedelta(seconds=50)
    drain()
    assert Job.objects.get(pk=r1.id).status == "SUCCESSFUL"
    assert Job.objects.get(pk=r3.id).status == "READY"  # not due yet
    drain(now=timezone.now() + timedelta(seconds=61))
    assert Job.objects.get(pk=r3.id).status == "SUCCESSFUL"
    with pytest.raises(TypeError, match="countdown or eta"):
        tasks.add.apply_async(args=[1, 1], countdown=1, eta=timezone.now())


def test_using_run_after_timedelta_defers():
    result = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 2)
    drain()
    assert Job.objects.get(pk=result.id).status == "READY"


def test_priority_then_age_order():
    low = tasks.add.using(priority=-5).enqueue(0, 0)
    high = tasks.add.using(priority=50).enqueue(0, 0)
    mid1 = tasks.add.enqueue(0, 1)
    mid2 = tasks.add.enqueue(0, 2)
    order = [m.id for i in range(4) for m in broker.claim("w", f"L{i}", ["default"], 1)]
    assert order == [high.id, mid1.id, mid2.id, low.id]


def test_routes_pick_queue_unless_the_call_does():
    assert Job.objects.get(pk=tasks.routed.enqueue().id).queue_name == "heavy_compute"
    assert Job.objects.get(pk=tasks.routed.using(queue_name="emails").enqueue().id
                           ).queue_name == "emails"
    assert Job.objects.get(pk=tasks.send_email.enqueue("a").id).queue_name == "emails"


def test_worker_only_takes_its_queues():
    email = tasks.send_email.enqueue("x@example.com")
    plain = tasks.add.enqueue(1, 1)
    drain(queues=["default"])
    assert Job.objects.get(pk=email.id).status == "READY"
    assert Job.objects.get(pk=plain.id).status == "SUCCESSFUL"


def test_unknown_queue_refused():
    with pytest.raises(InvalidTask):
        tasks.add.using(queue_name="nope").enqueue(1, 1)


def test_bad_argument_refused_and_nothing_written():
    with pytest.raises(ArgumentNotSerializable, match="argument 'x'"):
        tasks.add.enqueue(timezone.now(), 1)
    assert Job.objects.count() == 0


def test_rollback_means_never_enqueued_commit_means_once():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 1)
        raise RuntimeError
    assert Job.objects.count() == 0
    with transaction.atomic():
        result = tasks.add.enqueue(1, 1)
    drain()
    drain()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == ("SUCCESSFUL", 1)


def test_retries_record_every_error_then_fail():
    result = tasks.always_fails.enqueue()
    for _ in range(3):
        drain(now=timezone.now() + timedelta(seconds=10))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert [e.attempt for e in result.errors] == [1, 2, 3]
    err = result.errors[-1]
    assert isinstance(err, JobError)
    assert err.exception_class is ValueError and err.message == "nope"
    assert "raise ValueError" in err.traceback and err.worker_id
    with pytest.raises(TaskFailed, match="ValueError: nope"):
        result.wait(timeout=1)
    assert result.wait(timeout=1, propagate=False) is None


def test_retry_on_limits_which_errors_retry():
    result = tasks.fails_with_type_error.enqueue()
    drain()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == ("FAILED", 1)


def test_context_retry_with_exc():
    result = tasks.retries_then_succeeds.enqueue()
    for _ in range(3):
        drain()
    result.refresh()
    assert result.return_value == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"] * 2


def test_context_retry_countdown():
    result = tasks.retry_in_a_minute.enqueue()
    drain()
    job = Job.objects.get(pk=result.id)
    assert job.status == "READY" and job.available_at > timezone.now() + timedelta(seconds=50)
    drain(now=timezone.now() + timedelta(seconds=61))
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("FAILED", 2)


def test_non_json_return_value_fails_clearly():
    result = tasks.returns_set.enqueue()
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert "return value is a builtins.set" in result.errors[0].message


def test_async_task_runs():
    result = tasks.async_add.enqueue(4, 5)
    drain()
    assert result.wait(timeout=1) == 9


def test_progress_is_stored():
    result = tasks.progress.enqueue()
    drain()
    assert result.wait(timeout=1) == "half"
    assert Job.objects.get(pk=result.id).progress["current"] == 1


@pytest.mark.parametrize("path", ["os.system", "tests.tasks.not_a_task", "tests.tasks.gone",
                                  "no_such_module.task"])
def test_only_registered_tasks_run(path):
    job = Job.objects.create(task_path=path, args=["echo pwned"], enqueued_at=timezone.now(),
                             available_at=timezone.now())
    ok = tasks.add.enqueue(1, 1)
    drain()
    job.refresh_from_db()
    assert job.status == "FAILED"
    assert job.errors[0]["exception_class_path"] == "django_tasks.exceptions.TaskNotRegistered"
    assert path in job.errors[0]["message"]
    assert Job.objects.get(pk=ok.id).status == "SUCCESSFUL"  # the worker went on


def test_signals_fire():
    seen = []

    def record(signal_name):
        def receiver(sender, task_result, **kwargs):
            seen.append((signal_name, task_result.status))
        return receiver

    receivers = [(s, record(n)) for s, n in ((task_enqueued, "enqueued"),
                                            (task_started, "started"),
                                            (task_finished, "finished"))]
    for s, r in receivers:
        s.connect(r)
    try:
        tasks.add.enqueue(1, 1)
        drain()
    finally:
        for s, r in receivers:
            s.disconnect(r)
    assert seen == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL")]


def test_get_result_unknown_id():
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not-a-uuid")


def test_wait_times_out():
    result = tasks.add.enqueue(1, 1)
    with pytest.raises(ResultTimeout):
        result.wait(timeout=0.1)
    with pytest.raises(TimeoutError):
        result.get(timeout=0.05)


def test_release_gives_back_unstarted_claims():
    result = tasks.add.enqueue(1, 1)
    claimed = broker.claim("w1", "L1", ["default"], 5)
    assert [(m.id, m.lease, m.attempt) for m in claimed] == [(result.id, "L1", 1)]
    assert broker.claim("w2", "L2", ["default"], 5) == []  # held by w1
    assert broker.give_back(claimed) == 1
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts, job.worker_ids, job.worker_id, job.lease) == (
        "READY", 0, [], "", "")


def test_stale_worker_cannot_overwrite_reclaimed_job():
    result = tasks.add.enqueue(1, 1)
    first = broker.claim("w1", "L1", ["default"], 1)
    broker.give_back(first)
    broker.claim("w2", "L2", ["default"], 1)
    stale = Outcome(id=result.id, lease="L1", status="FAILED",
                    finished_at=timezone.now().isoformat())
    assert store.apply_outcomes("w1", [stale]) == []  # nothing written
    # Even the same worker, under the old claim's lease, changes nothing.
    assert store.apply_outcomes("w2", [stale]) == []
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.worker_id, job.attempts, job.lease) == ("CLAIMED", "w2", 0, "L2")
    # the public status of a claimed job is still READY: it has not started
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.READY


def test_prune_and_retry_verbs():
    ok = tasks.add.enqueue(1, 1)
    bad = tasks.fails_with_type_error.enqueue()
    drain()
    assert default_task_backend.retry([ok.id, bad.id]) == [bad.id]  # only the failed one
    drain()
    bad_job = Job.objects.get(pk=bad.id)
    assert (bad_job.status, bad_job.attempts, len(bad_job.errors)) == ("FAILED", 2, 2)
    assert Job.objects.prune(timezone.now() - timedelta(hours=1)) == 0
    assert Job.objects.prune(timezone.now() + timedelta(seconds=1), batch_size=1) == 2
    assert not Job.objects.filter(pk=ok.id).exists()


def test_prefetched_jobs_run_in_order_and_are_given_back_on_shutdown():
    results = [tasks.add.enqueue(i, 0) for i in range(4)]
    worker = TaskWorker(pool="inline", concurrency=1, prefetch=2)
    assert worker.exchange() == 3  # one slot + two prefetched, in one round trip
    assert worker.snapshot().buffered == tuple(r.id for r in results[:3])
    assert {Job.objects.get(pk=r.id).status for r in results[:3]} == {"CLAIMED"}
    results[0].refresh()
    assert results[0].status == TaskResultStatus.READY  # claimed is not started
    worker.dispatch()  # starts job 0 (the inline pool runs it there and then)
    assert worker.snapshot().buffered == (results[1].id, results[2].id)
    assert worker.exchange() == 0  # records the start; no room left to claim
    job0 = Job.objects.get(pk=results[0].id)
    assert (job0.status, job0.attempts, job0.worker_ids) == ("RUNNING", 1, [worker.worker_id])
    worker.dispatch()  # collects job 0's outcome, starts job 1
    worker.shutdown()  # writes both outcomes, gives job 2 back untouched
    jobs = [Job.objects.get(pk=r.id) for r in results]
    assert [j.status for j in jobs] == ["SUCCESSFUL", "SUCCESSFUL", "READY", "READY"]
    assert (jobs[1].attempts, jobs[1].worker_ids) == (1, [worker.worker_id])
    assert (jobs[2].attempts, jobs[2].worker_ids, jobs[2].worker_id) == (0, [], "")


def test_task_enqueued_is_sent_once_committed_and_never_for_a_rollback():
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(task_result.args)

    task_enqueued.connect(receiver)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.enqueue(1, 1)
            raise RuntimeError("roll back")
        with transaction.atomic():
            tasks.add.enqueue(2, 2)
            assert seen == []  # not before the job exists for workers
        assert seen == [[2, 2]]
    finally:
        task_enqueued.disconnect(receiver)


def test_a_failing_signal_receiver_cannot_fail_a_job(caplog):
    def broken(sender, task_result, **kwargs):
        raise RuntimeError("receiver bug")

    for s in (task_enqueued, task_started, task_finished):
        s.connect(broken)
    try:
        result = tasks.add.enqueue(2, 3)
        drain()
    finally:
        for s in (task_enqueued, task_started, task_finished):
            s.disconnect(broken)
    assert result.wait(timeout=1) == 5
    logged = [r.getMessage() for r in caplog.records
              if r.name == "django_tasks.worker" and "receiver bug" in r.getMessage()]
    assert {line.split()[0] for line in logged} == {"task_enqueued", "task_started",
                                                   "task_finished"}


def test_the_admins_retry_goes_through_the_backend():
    bad = tasks.fails_with_type_error.enqueue()
    drain()
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((task_result.id, task_result.status))

    task_enqueued.connect(receiver)
    try:
        assert default_task_backend.retry([bad.id]) == [bad.id]
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(bad.id, TaskResultStatus.READY)]
    job = Job.objects.get(pk=bad.id)
    assert (job.status, job.max_attempts, job.lease) == ("READY", job.attempts + 1, "")


def test_a_job_claimed_again_waits_while_its_old_attempt_runs_here():
    result = tasks.add.enqueue(1, 2)
    worker = TaskWorker(pool="inline", concurrency=2, prefetch=0)
    [old] = broker.claim(worker.worker_id, "old", ["default"], 1)
    # The old attempt still runs in this worker (say, after it was presumed dead and its
    # jobs rescued); the job is given back and claimed again by the same worker.
    worker.ledger.add_running(old)
    broker.give_back([old])
    assert worker.exchange() == 1
    assert worker.dispatch() == 0  # not a second run of the same job at once
    assert Job.objects.get(pk=result.id).status == "CLAIMED"
    worker.ledger.remove_running(old.id)  # the old attempt ended
    assert worker.dispatch() == 1
    worker.drain()
    assert result.wait(timeout=1) == 3


def test_one_job_is_stored_as_a_batch_stores_it():
    """An enqueue() has a statement of its own on PostgreSQL (a VALUES row); every column
    must hold what enqueue_many()'s statement writes for the same call: arguments, JSON,
    times, unique keys, headers, expiry and the database's clock for a job due now."""
    backend = default_task_backend
    calls = [
        (tasks.add, [1, 2], {}),
        (tasks.add.using(priority=7, queue_name="emails", run_after=timedelta(minutes=5)),
         [3], {"y": {"nested": [1, None, "é", "\u2028", 'qu"ote\\']}}),
        (tasks.add.using(run_after=timezone.now()), [6, 7], {}),
        (tasks.add.using(unique_key="k-1"), [4, 5], {}),
        (replace(tasks.add, expires=timedelta(minutes=3)), [8, 9], {}),
    ]
    singles, batch = [], []
    for task, args, kwargs in calls:
        single = backend.new_job(task, args, kwargs)
        single.headers = {"h": ["é", 1]}
        assert store.insert(single)
        singles.append(single)
        twin = backend.new_job(task, args, kwargs)
        twin.headers, twin.unique_key = single.headers, single.unique_key and "k-2"
        twin.enqueued_at, twin.expires_at = single.enqueued_at, single.expires_at
        batch.append(twin)
    store.insert_many(batch)
    columns = [f.attname for f in Job._meta.concrete_fields
               if f.attname not in ("id", "unique_key", "available_at")]
    for single, twin in zip(singles, batch, strict=True):
        one = Job.objects.get(pk=single.id)
        other = Job.objects.get(pk=twin.id)
        assert {c: getattr(one, c) for c in columns} == {c: getattr(other, c) for c in columns}
        assert one.unique_key == single.unique_key
        if single.run_after is None:  # the database's clock at the insert
            assert abs(one.available_at - one.enqueued_at) < timedelta(seconds=5)
        else:
            assert one.available_at == one.run_after == single.run_after
        assert (one.args, one.kwargs, one.headers) == (single.args, single.kwargs,
                                                      single.headers)
    # A unique job whose key an active job holds: nothing stored, False.
    held = backend.new_job(calls[3][0], [4, 5], {})
    assert store.insert(held) is False
    assert not Job.objects.filter(pk=held.id).exists()
