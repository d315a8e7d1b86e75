"""The broker contract: what the worker relies on, whichever broker carries the messages.

Every test takes the ``backend`` fixture, parametrized by the TASKS aliases in BROKERS,
and speaks only through ``backend.broker`` (the interface in backends/base.py) and
``backend.store``. Every test runs with the database, Redis and RabbitMQ brokers as
the default backend (the ``broker`` fixture), each on SQLite or PostgreSQL (TEST_DB);
a new broker joins by adding itself to that fixture, not by copying tests.
"""

from datetime import timedelta

import pytest
from django.db import transaction
from django.tasks import task_backends
from django.utils import timezone

from django_tasks.backends.base import Broker
from django_tasks.jobs.messages import Outcome, Start
from django_tasks.jobs.store import register_outcome_hook
from django_tasks.models import Job
from tests import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq_too]

@pytest.fixture
def backend(broker):
    """The default backend, once per broker (the ``broker`` fixture in conftest)."""
    return task_backends["default"]


def claim(backend, worker="w", lease="L", queues=("default",), limit=10, now=None):
    return backend.broker.claim(worker, lease, list(queues), limit, now)


def at():
    return timezone.now().isoformat()


def success(message, value=1):
    return Outcome(id=message.id, lease=message.lease, status="SUCCESSFUL", return_value=value,
                   finished_at=at())


def test_the_broker_is_the_interface(backend):
    assert isinstance(backend.broker, Broker)
    assert isinstance(backend.broker.supports_transactional_publish, bool)
    assert isinstance(backend.broker.supports_wakeup, bool)


def test_a_rolled_back_enqueue_is_never_claimable_a_committed_one_once(backend):
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.using(backend=backend.alias).enqueue(1, 1)
        raise RuntimeError("roll back")
    assert claim(backend) == []
    with transaction.atomic():
        kept = tasks.add.using(backend=backend.alias).enqueue(2, 2)
    assert [m.id for m in claim(backend)] == [kept.id]
    assert claim(backend, worker="other", lease="L2") == []


def test_claims_go_by_priority_then_age_across_the_queues_served_and_only_those(backend):
    old_low = tasks.add.enqueue(0, 0)
    email_high = tasks.send_email.enqueue("a")  # priority 10, queue emails
    new_low = tasks.add.enqueue(0, 1)
    routed = tasks.routed.enqueue()  # queue heavy_compute, not served below
    top = tasks.add.using(priority=50).enqueue(0, 2)
    got = [m.id for m in claim(backend, queues=["default", "emails"], limit=2)]
    got += [m.id for m in claim(backend, lease="L2", queues=["default", "emails"], limit=10)]
    assert got == [top.id, email_high.id, old_low.id, new_low.id]
    assert Job.objects.get(pk=routed.id).status == "READY"


def test_a_claim_takes_only_what_is_due(backend):
    later = tasks.add.using(run_after=timedelta(minutes=5)).enqueue(1, 1)
    assert claim(backend) == []
    [message] = claim(backend, now=timezone.now() + timedelta(minutes=6))
    assert (message.id, message.attempt, message.lease) == (later.id, 1, "L")


def test_a_message_carries_the_job(backend):
    result = tasks.add.using(priority=3).enqueue(4, y=5)
    [m] = claim(backend, worker="w1")
    assert (m.id, m.task_path, m.queue_name, m.priority, m.backend) == (
        result.id, "tests.tasks.add", "default", 3, backend.alias)
    assert (m.args, m.kwargs, m.attempt, m.max_attempts, m.worker_ids, m.errors) == (
        [4], {"y": 5}, 1, 1, ["w1"], [])
    assert m.enqueued_at is not None and m.available_at is not None


def test_given_back_jobs_are_claimable_again_untouched(backend):
    result = tasks.add.enqueue(1, 1)
    first = claim(backend, worker="w1", lease="L1")
    assert backend.broker.give_back(first) == 1
    [again] = claim(backend, worker="w2", lease="L2")
    assert (again.id, again.attempt, again.worker_ids, again.lease) == (
        result.id, 1, ["w2"], "L2")


def test_exchange_records_starts_writes_outcomes_and_claims(backend):
    a = tasks.add.enqueue(1, 1)
    b = tasks.add.enqueue(2, 2)
    c = tasks.add.enqueue(3, 3)
    ma, mb = claim(backend, worker="w", lease="L1", limit=2)
    # a started and finished between two round trips: no separate start; b only started.
    done = backend.broker.exchange("w", lease="L2", starts=[Start(mb.id, mb.lease, at())],
                                   outcomes=[success(ma, 2)], queues=["default"], limit=5)
    assert [m.id for m in done.claimed] == [c.id]
    assert [(x.id, x.status, x.attempts) for x in done.applied] == [(a.id, "SUCCESSFUL", 1)]
    assert done.stale == []
    job_a, job_b = Job.objects.get(pk=a.id), Job.objects.get(pk=b.id)
    assert (job_a.status, job_a.attempts, job_a.return_value) == ("SUCCESSFUL", 1, 2)
    assert (job_b.status, job_b.attempts, job_b.worker_ids) == ("RUNNING", 1, ["w"])


def test_writes_under_a_lost_lease_change_nothing(backend):
    result = tasks.add.enqueue(1, 1)
    [old] = claim(backend, worker="w", lease="old")
    backend.store.rescue("w", "gone", now=timezone.now())  # claimed only: given back
    backend.broker.recover("w")  # as the rescuer does after freeing the rows
    [new] = claim(backend, worker="w", lease="new")  # the same worker, a new claim
    late = success(old, 99)
    done = backend.broker.exchange("w", lease="x", starts=[Start(old.id, old.lease, at())],
                                   outcomes=[late])
    assert done.applied == [] and done.stale == [late]
    assert not backend.store.report_progress(result.id, {"current": 1}, lease=old.lease)
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.lease, job.attempts, job.return_value, job.progress) == (
        "CLAIMED", "new", 0, None, None)
    assert backend.store.report_progress(result.id, {"current": 1}, lease=new.lease)


def test_a_replayed_exchange_writes_nothing_twice(backend):
    result = tasks.always_fails.enqueue()  # 3 attempts, backoff 0
    [m] = claim(backend)
    failed = Outcome(id=m.id, lease=m.lease, status="READY", retry_at=at(),
                     error={"exception_class_path": "ValueError", "message": "nope"})
    first = backend.broker.exchange("w", lease="x", outcomes=[failed])
    again = backend.broker.exchange("w", lease="y", outcomes=[failed])  # answer was lost
    assert (len(first.applied), again.applied, again.stale) == (1, [], [failed])
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts, len(job.errors), job.lease) == ("READY", 1, 1, "")


def test_outcome_hooks_run_in_the_outcomes_transaction(backend, monkeypatch):
    from django.db import connections

    from django_tasks.jobs import store

    seen = []

    def hook(job_store, applied):
        # Inside the transaction that writes the outcomes.
        assert connections[job_store.database].in_atomic_block
        seen.extend((a.id, a.status) for a in applied)

    monkeypatch.setattr(store, "_OUTCOME_HOOKS", [])
    register_outcome_hook(hook)
    result = tasks.add.enqueue(1, 1)
    [m] = claim(backend)
    done = backend.broker.exchange("w", lease="y", outcomes=[success(m)])
    assert [a.id for a in done.applied] == [result.id]
    assert Job.objects.get(pk=result.id).status == "SUCCESSFUL"
    assert seen == [(result.id, "SUCCESSFUL")]
    # a stale outcome reaches no hook
    backend.broker.exchange("w", lease="z", outcomes=[success(m)])
    assert len(seen) == 1


def test_a_failing_outcome_hook_fails_only_its_job(backend, monkeypatch, caplog):
    from django_tasks.jobs import store

    bad = tasks.add.enqueue(1, 1)
    good = tasks.add.enqueue(2, 2)
    later = tasks.add.enqueue(3, 3)
    ran = []

    def hook(job_store, applied):
        ran.append([a.id for a in applied])
        if any(a.id == bad.id for a in applied):
            raise KeyError("a bug in the hook")
        Job.objects.using(job_store.database).filter(pk__in=[a.id for a in applied]).update(
            progress={"hooked": True})  # what a hook writes commits with the outcome

    monkeypatch.setattr(store, "_OUTCOME_HOOKS", [])
    register_outcome_hook(hook)
    mb, mg = claim(backend, limit=2)
    done = backend.broker.exchange("w", lease="L2", outcomes=[success(mb), success(mg)],
                                   queues=["default"], limit=5)
    assert [m.id for m in done.claimed] == [later.id]  # the claim still happened
    assert {a.id: a.status for a in done.applied} == {bad.id: "FAILED", good.id: "SUCCESSFUL"}
    failed, ok = Job.objects.get(pk=bad.id), Job.objects.get(pk=good.id)
    assert (failed.status, failed.lease, failed.progress) == ("FAILED", "", None)
    assert failed.errors[-1]["exception_class_path"].endswith("OutcomeHookFailed")
    assert "KeyError" in failed.errors[-1]["message"] and failed.errors[-1]["traceback"]
    assert (ok.status, ok.progress) == ("SUCCESSFUL", {"hooked": True})
    assert any("outcome hook" in r.getMessage() for r in caplog.records)


def test_a_row_that_cannot_be_read_fails_alone(backend):
    bad = tasks.add.enqueue(1, 1)
    good = tasks.add.enqueue(2, 2)
    Job.objects.filter(pk=bad.id).update(worker_ids=5)  # not a list: written by hand
    got = claim(backend)
    assert [m.id for m in got] == [good.id]
    job = Job.objects.get(pk=bad.id)
    assert (job.status, job.lease) == ("FAILED", "")
    assert "cannot be read (TypeError" in job.errors[0]["message"]
    # and a worker drains the rest as usual
    from django_tasks.testing import drain

    backend.broker.give_back(got)
    assert drain(backend=backend.alias) == 1
    assert Job.objects.get(pk=good.id).status == "SUCCESSFUL"


def test_a_retry_is_claimable_once_due_and_not_before(backend):
    result = tasks.always_fails.enqueue()  # 3 attempts
    [m] = claim(backend)
    retry = Outcome(id=m.id, lease=m.lease, status="READY", retry_delay=60.0,
                    retry_at=(timezone.now() + timedelta(seconds=60)).isoformat(),
                    error={"exception_class_path": "ValueError", "message": "nope"})
    backend.broker.exchange("w", lease="x", outcomes=[retry])
    assert claim(backend, lease="L2") == []
    [again] = claim(backend, lease="L3", now=timezone.now() + timedelta(seconds=90))
    assert (again.id, again.attempt, again.lease) == (result.id, 2, "L3")


def test_an_operators_retry_makes_a_failed_job_claimable_again(backend):
    result = tasks.add.enqueue(1, 1)
    [m] = claim(backend)
    failed = Outcome(id=m.id, lease=m.lease, status="FAILED", finished_at=at(),
                     error={"exception_class_path": "ValueError", "message": "nope"})
    backend.broker.exchange("w", lease="x", outcomes=[failed])
    assert claim(backend, lease="L2") == []
    assert backend.retry([result.id]) == [result.id]
    [again] = claim(backend, lease="L3")
    assert (again.id, again.attempt) == (result.id, 2)


def _hold_row_lock(job_id):
    """Another session that locks ``job_id``'s row (as application code doing
    ``select_for_update()`` would); returns the function that releases it.

    The release rolls back before closing: a close alone returns before the server's
    backend has ended its transaction, and a claim right after may find the row still
    locked (seen once in CI)."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    other = psycopg.connect(**params)
    other.execute('SELECT 1 FROM "django_tasks_job" WHERE id = %s FOR UPDATE', [job_id])

    def release():
        try:
            other.rollback()  # answered once the lock is gone
        finally:
            other.close()

    return release


@pytest.mark.postgres_only
def test_a_locked_row_is_skipped_not_waited_for(backend):
    from django.db import connection

    first = tasks.add.enqueue(0, 0)
    [started] = claim(backend)
    locked = tasks.add.enqueue(1, 1)
    free = tasks.add.enqueue(2, 2)
    release = _hold_row_lock(locked.id)
    with connection.cursor() as cursor:
        # Waiting for the lock would fail the claim after 2 s instead of hanging the test.
        cursor.execute("SET lock_timeout = '2s'")
    try:
        # The whole round trip (a start to record, then the claim) takes the free job.
        done = backend.broker.exchange(
            "w", lease="L2", starts=[Start(started.id, started.lease, at())],
            queues=["default"], limit=10)
        assert [m.id for m in done.claimed] == [free.id]
        assert claim(backend, lease="L3") == []  # and a claim alone skips it too
        assert Job.objects.get(pk=locked.id).status == "READY"  # untouched
    finally:
        release()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    # Unlocked, it is claimed (the Redis broker tries it again a second later).
    [again] = claim(backend, lease="L4", now=timezone.now() + timedelta(seconds=2))
    assert again.id == locked.id
    assert Job.objects.get(pk=first.id).status == "RUNNING"
