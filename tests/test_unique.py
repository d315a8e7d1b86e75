"""Unique jobs: one active job per (backend, key), kept by a partial unique index.

Every behaviour test runs once per broker (the ``broker`` fixture); the races use real
threads, each with its own database connection.
"""

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.tasks import TaskResultStatus, default_task_backend
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.urls import reverse
from django.utils import timezone

from django_tasks.jobs.messages import Start
from django_tasks.models import Job
from django_tasks.states import CLAIMED, FAILED, READY, RUNNING, SUCCESSFUL
from django_tasks.task import call_digest
from django_tasks.worker import TaskWorker
from tests import unique_tasks as ut

pytestmark = pytest.mark.django_db(transaction=True)


def drain(now=None):
    TaskWorker(pool="inline", concurrency=4).drain(now)


def rows(key):
    return list(Job.objects.filter(unique_key=key).order_by("enqueued_at"))


@pytest.fixture
def enqueued():
    """Ids of the jobs ``task_enqueued`` was sent for."""
    ids = []

    def receiver(sender, task_result, **kwargs):
        ids.append(task_result.id)

    task_enqueued.connect(receiver)
    yield ids
    task_enqueued.disconnect(receiver)


# -- the key ------------------------------------------------------------------------------


def test_the_key_of_unique_true_is_a_stable_digest_of_task_and_arguments():
    key = call_digest("tests.unique_tasks.unique_add", [1, 2], {"a": 1, "b": [1, "é"]})
    assert key == call_digest("tests.unique_tasks.unique_add", (1, 2), {"b": [1, "é"], "a": 1})
    # Pinned: the same call must map to the same key in every process and release.
    canonical = '["tests.unique_tasks.unique_add",[1,2],{"a":1,"b":[1,"é"]}]'
    assert key == hashlib.sha256(canonical.encode()).hexdigest()
    assert key != call_digest("tests.unique_tasks.unique_add", [2, 1], {"a": 1, "b": [1, "é"]})
    assert key != call_digest("tests.unique_tasks.plain", [1, 2], {"a": 1, "b": [1, "é"]})
    assert ut.unique_add.unique_key_for([1, 2], {}) == call_digest(
        "tests.unique_tasks.unique_add", [1, 2], {})
    assert ut.unique_add.using(unique_key="k").unique_key_for([1, 2], {}) == "k"
    assert ut.plain.unique_key_for([1], {}) is None


@pytest.mark.parametrize("value, says", [
    ("", "got '' (str)"), (42, "got 42 (int)"), ("x" * 256, "a string of 256 characters"),
])
def test_a_bad_unique_key_is_refused_with_what_to_pass(value, says):
    with pytest.raises(InvalidTask, match="unique_key must be a non-empty string of at most "
                                          "255 characters") as info:
        ut.plain.using(unique_key=value)
    assert says in str(info.value)
    assert ut.plain.using(unique_key="x" * 255).unique_key == "x" * 255


@pytest.mark.parametrize("value", [0, -1, "60", True, timedelta(0), float("inf")])
def test_a_bad_unique_for_is_refused(value):
    with pytest.raises(InvalidTask, match="unique_for must be a positive timedelta or number "
                                          "of seconds"):
        ut.unique_add.using(unique_for=value)


def test_unique_for_in_seconds_and_alone_means_unique_by_arguments():
    t = ut.plain.using(unique_for=90)
    assert t.unique_for == timedelta(seconds=90) and t.unique and t.is_unique
    assert not ut.plain.is_unique


def test_unique_on_a_backend_that_is_not_ours_is_refused(settings):
    settings.TASKS = {**settings.TASKS, "dummy": {
        "BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    assert ut.plain.using(backend="dummy").backend == "dummy"
    with pytest.raises(InvalidTask, match=r"unique jobs .* need a django_tasks backend.*"
                                          r"TASKS\['dummy'\] is DummyBackend"):
        ut.unique_add.using(backend="dummy")
    with pytest.raises(InvalidTask, match="DummyBackend"):
        ut.plain.using(backend="dummy", unique_key="k")


# -- while the job is active ------------------------------------------------------------


def test_a_second_enqueue_returns_the_ready_job_and_sends_no_signal(broker, enqueued):
    first = ut.unique_add.enqueue(1, 2)
    again = ut.unique_add.enqueue(1, 2)
    assert again.id == first.id and again.status == TaskResultStatus.READY
    assert again.args == [1, 2] and again.task.module_path == "tests.unique_tasks.unique_add"
    other = ut.unique_add.enqueue(2, 1)  # other arguments, another key
    assert other.id != first.id
    assert Job.objects.count() == 2
    assert enqueued == [first.id, other.id]
    if broker == "redis":  # published once
        b = default_task_backend.broker
        assert b.client.zcard(b.key("q", "default")) == 2


def test_an_explicit_key_is_shared_whatever_the_arguments(broker):
    first = ut.plain.using(unique_key="invoice-42").enqueue(1)
    assert ut.plain.using(unique_key="invoice-42").enqueue(2).id == first.id
    assert ut.unique_add.using(unique_key="invoice-42").enqueue(3, 4).id == first.id
    assert ut.plain.using(unique_key="invoice-43").enqueue(1).id != first.id
    assert ut.plain.enqueue(1).id != first.id  # not unique: always a new job
    assert rows("invoice-42")[0].args == [1]


def test_a_scheduled_job_holds_its_key(broker):
    later = ut.unique_add.using(run_after=timedelta(hours=1))
    first = later.enqueue(1, 2)
    assert ut.unique_add.enqueue(1, 2).id == first.id
    drain()  # not due: nothing runs
    assert Job.objects.get(pk=first.id).status == READY


@pytest.mark.parametrize("status", [CLAIMED, RUNNING])
def test_a_claimed_or_running_job_holds_its_key(broker, status):
    first = ut.unique_add.enqueue(1, 2)
    claimed = default_task_backend.broker.claim("w1", "lease1", ["default"], 10)
    assert [m.id for m in claimed] == [first.id]
    if status == RUNNING:
        default_task_backend.store.record_starts(
            "w1", [Start(first.id, "lease1", timezone.now().isoformat())])
    assert Job.objects.get(pk=first.id).status == status
    again = ut.unique_add.enqueue(1, 2)
    assert again.id == first.id
    assert again.status == (TaskResultStatus.RUNNING if status == RUNNING
                            else TaskResultStatus.READY)
    assert Job.objects.count() == 1


def test_a_finished_job_frees_its_key(broker, enqueued):
    first = ut.unique_add.enqueue(1, 2)
    drain()
    assert Job.objects.get(pk=first.id).status == SUCCESSFUL
    second = ut.unique_add.enqueue(1, 2)
    assert second.id != first.id and second.status == TaskResultStatus.READY
    assert ut.unique_add.enqueue(1, 2).id == second.id
    assert enqueued == [first.id, second.id]
    drain()
    assert [j.status for j in rows(first.task.unique_key_for([1, 2], {}))] == [SUCCESSFUL] * 2


def test_a_failed_job_frees_its_key(broker):
    first = ut.unique_fails.enqueue()
    drain()
    assert Job.objects.get(pk=first.id).status == FAILED
    assert ut.unique_fails.enqueue().id != first.id


# -- unique_for ---------------------------------------------------------------------------


def test_with_unique_for_a_finished_job_counts_until_the_window_passed(broker, enqueued):
    first = ut.unique_windowed.enqueue("a")
    drain()
    again = ut.unique_windowed.enqueue("a")
    assert again.id == first.id and again.status == TaskResultStatus.SUCCESSFUL
    assert again.return_value == "a"
    assert Job.objects.count() == 1  # the insert was rolled back to its savepoint
    if broker == "redis":  # and its publish with it
        b = default_task_backend.broker
        assert b.client.zcard(b.key("q", "default")) == 0
    assert ut.unique_windowed.enqueue("b").id != first.id  # other arguments
    # 9 minutes later (enqueued_at moved back): still in the 10 minutes window.
    Job.objects.filter(pk=first.id).update(enqueued_at=timezone.now() - timedelta(minutes=9))
    assert ut.unique_windowed.enqueue("a").id == first.id
    # A shorter window given by the call: this job no longer counts.
    fresh = ut.unique_windowed.using(unique_for=timedelta(minutes=5)).enqueue("a")
    assert fresh.id != first.id
    drain()
    Job.objects.update(enqueued_at=timezone.now() - timedelta(minutes=11))  # window passed
    third = ut.unique_windowed.enqueue("a")
    assert third.id not in (first.id, fresh.id)
    assert len(enqueued) == 4  # a, b, fresh, third


def test_with_unique_for_an_active_job_counts_however_old(broker):
    first = ut.unique_windowed.enqueue("a")
    Job.objects.filter(pk=first.id).update(enqueued_at=timezone.now() - timedelta(days=1))
    assert ut.unique_windowed.enqueue("a").id == first.id


# -- rescue, retries, operator retries --------------------------------------------------------


def test_rescue_keeps_the_key(broker):
    store = default_task_backend.store
    claimed = ut.unique_add.enqueue(1, 2)
    running = ut.unique_add.using(unique_key="running").enqueue(3, 4)
    default_task_backend.broker.claim("w1", "lease1", ["default"], 10)
    store.record_starts("w1", [Start(running.id, "lease1", timezone.now().isoformat())])
    counts = store.rescue("w1", "lost")
    assert (counts.given_back, counts.failed) == (1, 1)  # claimed: back; started: 1 attempt
    assert Job.objects.get(pk=claimed.id).status == READY
    assert ut.unique_add.enqueue(1, 2).id == claimed.id
    # The started one used its only attempt: FAILED, the key is free.
    assert Job.objects.get(pk=running.id).status == FAILED
    assert ut.unique_add.using(unique_key="running").enqueue(3, 4).id != running.id


def test_a_retry_keeps_the_key(broker):
    first = ut.unique_retried_later.enqueue()
    drain()
    job = Job.objects.get(pk=first.id)
    assert (job.status, job.attempts) == (READY, 1)  # waiting 60 s for its retry
    assert job.unique_key == ut.unique_retried_later.unique_key_for([], {})
    assert ut.unique_retried_later.enqueue().id == first.id
    drain(now=timezone.now() + timedelta(minutes=2))  # the retry runs, and fails for good
    assert Job.objects.get(pk=first.id).status == FAILED
    assert ut.unique_retried_later.enqueue().id != first.id


def test_an_operator_retry_waits_while_another_job_holds_the_key(broker):
    failed = ut.unique_fails.enqueue()
    drain()
    newer = ut.unique_fails.enqueue()
    assert default_task_backend.retry([failed.id]) == []  # newer holds the key
    assert Job.objects.get(pk=failed.id).status == FAILED
    drain()
    # Two failed jobs of one key: only the newest is retried.
    assert default_task_backend.retry([failed.id, newer.id]) == [newer.id]
    assert ut.unique_fails.enqueue().id == newer.id


# -- transactions ---------------------------------------------------------------------------


def test_in_a_transaction_the_key_is_held_and_a_rollback_frees_it(broker, enqueued):
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = ut.unique_add.enqueue(1, 2)
        assert ut.unique_add.enqueue(1, 2).id == dropped.id  # its own transaction's job
        raise RuntimeError("roll back")
    assert not Job.objects.exists() and enqueued == []
    with transaction.atomic():
        kept = ut.unique_add.enqueue(1, 2)
        assert ut.unique_add.enqueue(1, 2).id == kept.id
        Job.objects.create(task_path="x", enqueued_at=timezone.now(),
                           available_at=timezone.now())  # the transaction goes on
    assert kept.id != dropped.id and enqueued == [kept.id]
    assert Job.objects.filter(unique_key__gt="").count() == 1
    if broker == "redis":
        b = default_task_backend.broker
        assert b.client.zrange(b.key("q", "default"), 0, -1) == [kept.id.encode()]


def test_the_holder_finishing_between_the_insert_and_the_lookup_inserts_again(
        broker, monkeypatch, enqueued):
    first = ut.unique_add.enqueue(1, 2)
    store = default_task_backend.store
    lookup = store.unique_holder

    def finishing_first(key, since=None):
        Job.objects.filter(pk=first.id).update(status=SUCCESSFUL, finished_at=timezone.now())
        monkeypatch.setattr(store, "unique_holder", lookup)
        return lookup(key, since)

    monkeypatch.setattr(store, "unique_holder", finishing_first)
    second = ut.unique_add.enqueue(1, 2)
    assert second.id != first.id
    assert [str(j.id) for j in rows(second.task.unique_key_for([1, 2], {}))] == [
        first.id, second.id]
    assert enqueued == [first.id, second.id]


def test_queries_of_a_unique_enqueue(django_assert_num_queries):
    with django_assert_num_queries(1):  # INSERT ... ON CONFLICT DO NOTHING
        first = ut.unique_add.enqueue(1, 2)
    with django_assert_num_queries(2):  # the same, then the look-up of the holder
        assert ut.unique_add.enqueue(1, 2).id == first.id


# -- races ----------------------------------------------------------------------------------


def race(n, enqueue):
    """``n`` threads, each with its own connection, call ``enqueue`` at once."""
    barrier = threading.Barrier(n)
    ids, errors = [], []

    def run():
        try:
            barrier.wait(timeout=30)
            ids.append(enqueue().id)
        except Exception as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return ids


def test_fifty_threads_enqueueing_one_key_create_one_job(broker, enqueued):
    ids = race(50, lambda: ut.unique_add.enqueue(1, 2))
    assert len(ids) == 50 and len(set(ids)) == 1
    assert [str(j.id) for j in Job.objects.all()] == ids[:1]
    assert enqueued == ids[:1]
    if broker == "redis":
        b = default_task_backend.broker
        assert b.client.zcard(b.key("q", "default")) == 1


def test_fifty_threads_in_transactions_create_one_job(broker):
    def enqueue():
        with transaction.atomic():
            return ut.unique_windowed.enqueue("a")

    ids = race(50, enqueue)
    assert len(set(ids)) == 1 and Job.objects.count() == 1


@pytest.mark.postgres_only
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_concurrent_enqueue_waits_for_the_transaction_holding_the_key(broker, outcome):
    inserted, decide, other = threading.Event(), threading.Event(), []

    def holder():
        try:
            with transaction.atomic():
                other.append(ut.unique_add.enqueue(1, 2).id)
                inserted.set()
                decide.wait(10)
                if outcome == "rollback":
                    transaction.set_rollback(True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    assert inserted.wait(10)
    # The other enqueue blocks on the uncommitted row until the holder decides.
    threading.Timer(0.3, decide.set).start()
    began = time.monotonic()
    mine = ut.unique_add.enqueue(1, 2)
    assert time.monotonic() - began >= 0.25  # it waited for the holder's decision
    thread.join(10)
    if outcome == "commit":
        assert mine.id == other[0]
    else:
        assert mine.id != other[0]
    assert [str(j.id) for j in Job.objects.all()] == [mine.id]


# -- admin ----------------------------------------------------------------------------------


def test_the_admin_shows_the_key_and_searches_it(client):
    job = ut.plain.using(unique_key="invoice-42").enqueue(1)
    ut.plain.enqueue(2)
    user = User.objects.create_superuser("admin", password="pw")
    client.force_login(user)
    detail = client.get(reverse("admin:django_tasks_job_change", args=[job.id]))
    assert "invoice-42" in detail.text
    found = client.get(reverse("admin:django_tasks_job_changelist"), {"q": "invoice-42"})
    assert job.id in found.text and "1 result" in found.text
