"""Bulk enqueue (``Task.enqueue_many``, ``django_tasks.enqueue_many``): what one enqueue
promises holds for each job, with one INSERT per batch, one NOTIFY per batch on
PostgreSQL, one script call per batch for Redis and one confirm window for RabbitMQ.

These tests run in autocommit (``transaction=True``) unless they open a transaction
themselves, as a producer does.
"""

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections, transaction
from django.db.models import Count
from django.dispatch import receiver
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks import (
    ArgumentNotSerializable,
    InvalidArguments,
    aenqueue_many,
    chord,
    enqueue_many,
    group,
)
from django_tasks.jobs import store as store_module
from django_tasks.models import Job, ScheduleTick
from tests import tasks, unique_tasks
from tests.helpers import start_worker
from tests.test_hot_path import flushed, redis_commands

pytestmark = pytest.mark.django_db(transaction=True)

POSTGRES = connection.vendor == "postgresql"


def inserts(captured):
    """The captured statements that insert jobs."""
    return [q["sql"] for q in captured.captured_queries
            if 'INSERT INTO "django_tasks_job"' in q["sql"]]


@pytest.fixture
def enqueued():
    """The ids ``task_enqueued`` was sent for, in order."""
    ids = []

    @receiver(task_enqueued, weak=False)
    def record(sender, task_result, **kwargs):
        ids.append(task_result.id)

    yield ids
    task_enqueued.disconnect(record)


@pytest.mark.rabbitmq_too
def test_results_in_order_and_a_worker_runs_every_job(broker):
    calls = [(i, i) if i % 2 else {"x": i, "y": 1} for i in range(60)]
    results = tasks.add.enqueue_many(calls)
    flushed(task_backends["default"])
    assert [r.args or r.kwargs for r in results] == [
        [i, i] if i % 2 else {"x": i, "y": 1} for i in range(60)]
    assert len({r.id for r in results}) == 60
    assert all(r.status == "READY" and r.backend == "default" for r in results)
    rows = dict(Job.objects.values_list("id", "status"))
    assert {str(k) for k in rows} == {r.id for r in results}
    # Ids and enqueue times increase with the calls, as one enqueue after another's.
    jobs = list(Job.objects.order_by("id"))
    assert [str(j.id) for j in jobs] == [r.id for r in results]
    assert [j.enqueued_at for j in jobs] == sorted(j.enqueued_at for j in jobs)
    # The one real worker of this file: it takes them from the broker and runs them all.
    worker = start_worker("--burst", "-c", "2", "--loglevel", "WARNING")
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, output
    statuses = dict(Job.objects.values_list("status").annotate(n=Count("id")))
    assert statuses == {"SUCCESSFUL": 60}, (statuses, output[-3000:])
    for result, call in zip(results, calls, strict=True):
        result.refresh()
        expected = sum(call) if isinstance(call, tuple) else call["x"] + 1
        assert (result.status, result.return_value) == ("SUCCESSFUL", expected)


@pytest.mark.rabbitmq_too
def test_one_insert_per_batch_and_one_publish_per_batch(broker, monkeypatch):
    backend = task_backends["default"]
    tasks.add.enqueue(0, 0)  # connections open, scripts loaded
    flushed(backend)
    published = []
    if broker == "rabbitmq":
        original = type(backend.broker.publisher).publish

        def publish(self, entries):
            published.append(len(entries))
            return original(self, entries)

        monkeypatch.setattr(type(backend.broker.publisher), "publish", publish)
    with redis_commands() as sent, CaptureQueriesContext(connection) as queries:
        results = tasks.add.enqueue_many([(i, 1) for i in range(2 * store_module.BATCH_SIZE + 5)])
        flushed(backend)
    assert len(results) == 2005
    assert len(inserts(queries)) == 3  # 1,000 + 1,000 + 5
    # The statements of the call: the three INSERTs in one transaction, nothing per job.
    assert len(queries) <= 5, [q["sql"][:40] for q in queries.captured_queries]
    notifies = [sql for sql in inserts(queries) if "pg_notify" in sql]
    assert len(notifies) == (3 if POSTGRES and broker == "database" else 0)
    assert sent == (["EVAL"] * 3 if broker == "redis" else [])
    assert published == ([2005] if broker == "rabbitmq" else [])  # one confirm window
    assert Job.objects.filter(status="READY").count() == 2006


@pytest.mark.rabbitmq_too
def test_a_rolled_back_bulk_enqueue_stores_and_publishes_nothing(broker, enqueued):
    backend = task_backends["default"]
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue_many([(i, i) for i in range(30)])
        raise RuntimeError("rollback")
    flushed(backend)
    assert not Job.objects.exists() and enqueued == []
    # Nothing reached the broker: a claim finds nothing.
    assert backend.broker.claim("w", "L", ["default"], 10) == []


@pytest.mark.rabbitmq_too
def test_more_than_a_batch_keeps_every_value_and_wakes_once_committed(broker, enqueued):
    """Outside a query log (which keeps the INSERTs), PostgreSQL loads more than a batch
    of plain jobs with one COPY: every column as the INSERTs would write it."""
    import select

    backend = task_backends["default"]
    n = 2 * store_module.BATCH_SIZE + 5
    later = timezone.now() + timedelta(hours=1)
    text = 'a\\b\t"c"\n\r\\N é'  # every character COPY's text format escapes
    delayed = tasks.add.using(priority=3, run_after=later, queue_name="emails")
    calls = [(tasks.add, (i, text), {}) if i % 2 else
             (delayed, (), {"x": [i, (1, text)], "y": {text: None}}) for i in range(n)]
    listener = backend.broker.wake_source(["default"])
    if hasattr(listener, "arm"):  # Redis's: an idle worker's takes the next job itself
        listener.arm("w")
    try:
        with transaction.atomic():
            results = enqueue_many(calls)
            assert enqueued == []
            if listener is not None:
                assert select.select([listener], [], [], 0.2)[0] == []  # not before commit
        if listener is not None:
            assert select.select([listener], [], [], 5)[0] == [listener]
            assert listener.drain() == 1
    finally:
        if listener is not None:
            listener.close()
    flushed(backend)
    assert enqueued == [r.id for r in results]
    jobs = {str(j.id): j for j in Job.objects.all()}
    assert len(jobs) == n == len(results)
    now = timezone.now()
    for i, result in enumerate(results):
        job = jobs[result.id]
        if i % 2:
            expected = ([i, text], {}, 0, "default", None)
            assert job.available_at <= now
        else:
            expected = ([], {"x": [i, [1, text]], "y": {text: None}}, 3, "emails", later)
            assert job.available_at == later
        assert (job.args, job.kwargs, job.priority, job.queue_name, job.run_after) == expected
        assert (result.args, result.kwargs) == expected[:2]
        assert (job.status, job.attempts, job.errors, job.worker_ids, job.lease) == (
            "READY", 0, [], [], "")
        assert job.enqueued_at == result.enqueued_at and job.headers is None
    assert backend.broker.claim("w", "L", ["default"], 3)  # claimable once committed


@pytest.mark.rabbitmq_too
def test_a_bulk_enqueue_failing_in_a_later_batch_stores_nothing(broker, enqueued, monkeypatch):
    from django_tasks import EnqueueError
    from django_tasks.backends import enqueue as enqueue_module

    backend = task_backends["default"]
    made = enqueue_module.uuid7_strs

    def last_id_repeats_the_first(n):
        ids = made(n)
        ids[-1] = ids[0]
        return ids

    monkeypatch.setattr(enqueue_module, "uuid7_strs", last_id_repeats_the_first)
    with pytest.raises(EnqueueError, match="Could not enqueue 2005 jobs"):
        tasks.add.enqueue_many([(i, 1) for i in range(2 * store_module.BATCH_SIZE + 5)])
    flushed(backend)
    assert not Job.objects.exists() and enqueued == []
    assert backend.broker.claim("w", "L", ["default"], 10) == []


def test_task_enqueued_is_sent_for_each_new_job_once_committed(enqueued):
    with transaction.atomic():
        results = tasks.add.enqueue_many([(i, i) for i in range(5)])
        assert enqueued == []
    assert enqueued == [r.id for r in results]


def test_bad_calls_are_refused_naming_the_call_and_nothing_is_stored():
    with pytest.raises(InvalidArguments, match=r"^Call 2: tests\.tasks\.add\(x, y\): "):
        tasks.add.enqueue_many([(1, 2), (3, 4), (5,)])
    with pytest.raises(ArgumentNotSerializable, match=r"^Call 1: .*is a builtins\.set"):
        tasks.add.enqueue_many([(1, 2), ({1}, 2)])
    with pytest.raises(TypeError, match="a list or tuple of positional arguments"):
        tasks.add.enqueue_many([(1, 2), 3])
    with pytest.raises(InvalidTask, match=r"^Call 1: .* the calls of one enqueue_many"):
        enqueue_many([(tasks.add, (1, 2), {}),
                      (tasks.add.using(backend="redis"), (1, 2), {})])
    assert not Job.objects.exists()
    assert tasks.add.enqueue_many([]) == [] and enqueue_many([]) == []


def test_options_per_call_and_routes():
    later = timezone.now() + timedelta(hours=1)
    results = enqueue_many([
        (tasks.add.using(priority=7), (1, 2), {}),
        (tasks.add.using(run_after=later, queue_name="emails"), (3, 4), {}),
        (tasks.routed, (), {}),  # ROUTES send it to heavy_compute
        (replace(tasks.add, expires=60), (5, 6), {}),
    ])
    jobs = [Job.objects.get(pk=r.id) for r in results]
    assert [(j.priority, j.queue_name) for j in jobs] == [
        (7, "default"), (0, "emails"), (0, "heavy_compute"), (0, "default")]
    assert jobs[1].run_after == later == jobs[1].available_at
    assert jobs[0].available_at <= timezone.now() and jobs[0].run_after is None
    assert jobs[3].expires_at == jobs[3].enqueued_at + timedelta(seconds=60)
    assert [r.task.queue_name for r in results] == ["default", "emails", "heavy_compute",
                                                     "default"]


@pytest.mark.parametrize("broker", ["database", pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
def test_unique_keys_behave_as_one_enqueue_after_another(broker, enqueued):
    held = unique_tasks.unique_add.enqueue(1, 1)
    windowed = unique_tasks.unique_windowed.enqueue(9)
    enqueued.clear()
    with CaptureQueriesContext(connection) as queries:
        results = enqueue_many([
            (unique_tasks.unique_add, (1, 1), {}),  # held: the holder comes back
            (unique_tasks.unique_add, (2, 2), {}),  # new
            (unique_tasks.plain, (1,), {}),
            (unique_tasks.unique_add, (2, 2), {}),  # the call before it in the batch
            (unique_tasks.unique_windowed, (9,), {}),  # unique_for: one at a time
            (unique_tasks.unique_windowed, (10,), {}),
        ])
    assert len(inserts(queries)) == 3  # the batch, then the two unique_for calls
    assert results[0].id == held.id and results[4].id == windowed.id
    assert results[3].id == results[1].id != held.id
    assert enqueued == [results[1].id, results[2].id, results[5].id]  # new jobs only
    assert Job.objects.count() == 5


def test_a_group_of_1000_inserts_its_jobs_in_one_statement(broker):
    with CaptureQueriesContext(connection) as queries:
        result = group(tasks.add.s(i, i) for i in range(1000)).delay()
    assert len(inserts(queries)) == 1
    assert len(queries) <= 4, [q["sql"][:40] for q in queries.captured_queries]
    assert len(result) == 1000 and Job.objects.filter(workflow_id=result.id).count() == 1000
    with CaptureQueriesContext(connection) as queries:
        chord(group(tasks.add.s(i, i) for i in range(999)), tasks.tsum.s()).delay()
    assert len(inserts(queries)) == 1  # 999 members and the body
    assert Job.objects.filter(status="WAITING").count() == 1
    # More than a batch: loaded in one go on PostgreSQL, links and waits as inserted.
    result = chord(group(tasks.add.s(i, i) for i in range(1500)), tasks.tsum.s()).delay()
    body = Job.objects.get(pk=result.id)
    assert (body.status, body.waiting_on, body.task_path) == ("WAITING", 1500, "tests.tasks.tsum")
    assert Job.objects.filter(workflow_id=body.workflow_id).count() == 1501
    assert Job.objects.filter(workflow_id=body.workflow_id, status="READY",
                              links__isnull=False).count() == 1500


def test_catch_up_enqueues_its_ticks_in_one_insert_and_still_once():
    from django_tasks.beat.scheduler import Scheduler
    from tests.test_scheduler import T0, entry, synced

    scheduler = synced(entry(schedule=300, catch_up="all"))
    now = T0 + timedelta(hours=3, seconds=90)
    with CaptureQueriesContext(connection) as queries:
        fired = scheduler.run_due(now)
    assert len(fired) == 36 and len(inserts(queries)) == 1
    assert [str(t.job_id) for t in ScheduleTick.objects.order_by("tick_at")] == [
        f.job_id for f in fired]
    # A second scheduler that had one of the ticks already: the others still fire, once.
    ScheduleTick.objects.all().delete()
    Job.objects.all().delete()
    Scheduler("default")._schedules().update(checked_until=T0, next_run_at=T0)
    ScheduleTick.objects.create(schedule_id=Scheduler("default")._schedules().get().pk,
                                tick_at=T0 + timedelta(minutes=5), enqueued_at=now)
    assert len(scheduler.run_due(now)) == 35 and Job.objects.count() == 35


def test_async_variants():
    try:
        results = asyncio.run(tasks.add.aenqueue_many([(1, 2), {"x": 3, "y": 4}]))
        more = asyncio.run(aenqueue_many([(tasks.mul, (2, 3), {})]))
    finally:  # the connection of the thread they ran in
        asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())
    assert [r.args or r.kwargs for r in results + more] == [[1, 2], {"x": 3, "y": 4}, [2, 3]]
    assert Job.objects.count() == 3
