"""django_tasks.testing: drain() and run_once() for users' own test suites.

The scenarios of :class:`Scenarios` run twice: inside a test transaction (plain
``django_db``) and with ``django_db(transaction=True)``. Tests named ``test_doc_*``
are the code samples of docs/testing.md, as printed there.
"""

import os
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.transaction import TransactionManagementError
from django.tasks import TaskResultStatus, default_task_backend, task
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test import TestCase, override_settings
from django.utils import timezone

from django_tasks import TasksError
from django_tasks.models import Job
from django_tasks.testing import DrainLimitExceeded, drain, run_once
from tests.testing_tasks import (
    create_user,
    create_user_atomic,
    interrupts,
    poll_forever,
    send_welcome_email,
    sync_account,
    urgent,
    welcome_all,
)

IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend",
                         "QUEUES": ["default", "emails"]}}
DUMMY = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend",
                     "QUEUES": ["default", "emails"]}}


def statuses():
    return sorted(Job.objects.values_list("status", flat=True))


class Scenarios:
    """Run by each subclass under its own database mark."""

    in_test_transaction: bool

    def test_runs_in_the_mode_it_claims(self):
        assert connection.in_atomic_block is self.in_test_transaction

    def test_doc_drain_runs_jobs_and_the_jobs_they_enqueue(self, mailoutbox):
        result = welcome_all.enqueue(["ada@example.com", "bob@example.com"])
        assert drain() == 3                     # welcome_all, then the two emails it enqueued
        assert [m.to for m in mailoutbox] == [["ada@example.com"], ["bob@example.com"]]
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 2
        assert Job.objects.filter(status="SUCCESSFUL").count() == 3

    def test_nothing_is_left_claimed_or_running(self):
        welcome_all.enqueue(["a@example.com", "b@example.com"])
        drain()
        assert not Job.objects.held().exists()
        assert statuses() == ["SUCCESSFUL"] * 3

    def test_a_task_raising_keyboard_interrupt_fails_and_drain_goes_on(self):
        bad = interrupts.enqueue()
        good = urgent.enqueue(1)
        assert drain() == 2                     # the exception does not escape drain()
        job = Job.objects.get(pk=bad.id)
        assert (job.status, job.attempts) == ("FAILED", 1)  # not retried
        assert job.errors[0]["exception_class_path"] == "builtins.KeyboardInterrupt"
        assert Job.objects.get(pk=good.id).status == "SUCCESSFUL"

    def test_jobs_run_one_at_a_time_in_claim_order(self):
        low = send_welcome_email.enqueue("late@example.com")
        high = urgent.enqueue(1)                # priority 10 beats an older priority 0
        assert drain() == 2
        low_job, high_job = Job.objects.get(pk=low.id), Job.objects.get(pk=high.id)
        assert high_job.finished_at <= low_job.started_at

    def test_doc_deferred_job_waits_until_now_passes_it(self, mailoutbox):
        send_welcome_email.using(run_after=timedelta(hours=1)).enqueue("ada@example.com")
        assert drain() == 0
        assert drain(now=timezone.now() + timedelta(minutes=59)) == 0
        assert drain(now=timezone.now() + timedelta(hours=1, seconds=1)) == 1
        assert len(mailoutbox) == 1

    def test_doc_retries_run_when_time_is_moved(self):
        result = sync_account.enqueue(7)
        assert drain() == 1                     # attempt 1 fails: retry in 60 s
        result.refresh()
        assert (result.status, result.attempts) == (TaskResultStatus.READY, 1)
        assert drain() == 0                     # not due yet
        assert drain(now=timezone.now() + timedelta(seconds=61)) == 1   # attempt 2 fails
        assert drain(now=timezone.now() + timedelta(minutes=5)) == 1    # attempt 3
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == "synced 7"
        assert [e.exception_class for e in result.errors] == [ConnectionError] * 2

    def test_every_retry_due_by_now_runs_in_one_drain(self):
        result = sync_account.enqueue(8)
        # Retries fall due 60 s after attempt 1, then 120 s after attempt 2: both are
        # before now + 5 minutes, so one drain runs all three attempts.
        assert drain(now=timezone.now() + timedelta(minutes=5)) == 3
        result.refresh()
        assert (result.status, result.attempts) == (TaskResultStatus.SUCCESSFUL, 3)

    def test_a_pinned_now_also_pins_jobs_enqueued_meanwhile(self):
        # The child is due when it is enqueued: after a `now` pinned in the past.
        an_hour_ago = timezone.now() - timedelta(hours=1)
        welcome_all.using(run_after=an_hour_ago).enqueue(["a@example.com"])
        assert drain(now=an_hour_ago) == 1
        assert statuses() == ["READY", "SUCCESSFUL"]
        assert drain() == 1

    def test_doc_max_jobs_stops_a_task_that_enqueues_itself(self):
        poll_forever.enqueue(0)
        with pytest.raises(DrainLimitExceeded, match=r"max_jobs=50 attempts .* still ready"):
            drain(max_jobs=50)
        assert Job.objects.filter(status="SUCCESSFUL").count() == 50
        [next_run] = Job.objects.filter(status="READY")   # given back untouched
        assert (next_run.args, next_run.attempts, next_run.worker_ids) == ([50], 0, [])
        assert not Job.objects.held().exists()

    def test_limit_error_is_a_tasks_error(self):
        assert issubclass(DrainLimitExceeded, TasksError)

    def test_max_jobs_is_exact(self):
        for n in range(3):
            urgent.enqueue(n)
        with pytest.raises(DrainLimitExceeded, match="max_jobs=2 "):
            drain(max_jobs=2)
        assert statuses() == ["READY", "SUCCESSFUL", "SUCCESSFUL"]
        assert drain(max_jobs=1) == 1           # exactly max_jobs ready: no error
        assert drain(max_jobs=0) == 0

    def test_started_and_finished_receivers_run_as_the_jobs_do(self):
        heard = []

        def receiver(signal, sender, task_result, **kwargs):
            heard.append((signal, task_result.status))

        task_started.connect(receiver)
        task_finished.connect(receiver)
        try:
            urgent.enqueue(1)
            assert heard == []
            drain()
        finally:
            task_started.disconnect(receiver)
            task_finished.disconnect(receiver)
        assert heard == [(task_started, TaskResultStatus.RUNNING),
                         (task_finished, TaskResultStatus.SUCCESSFUL)]

    def test_doc_run_once_steps(self):
        welcome_all.enqueue(["ada@example.com", "bob@example.com"])
        assert run_once() == 1                  # welcome_all ran
        assert Job.objects.filter(status="READY").count() == 2   # its emails wait
        assert run_once() == 2
        assert run_once() == 0

    def test_run_once_leaves_retries_for_the_next_step_and_nothing_claimed(self):
        sync_account.enqueue(9)
        urgent.enqueue(1)
        later = timezone.now() + timedelta(minutes=5)
        assert run_once(now=later) == 2
        assert statuses() == ["READY", "SUCCESSFUL"]   # the retry is not run in this step
        assert not Job.objects.held().exists()
        assert run_once(now=later) == 1

    def test_queues_limit_what_runs(self, mailoutbox):
        send_welcome_email.enqueue("ada@example.com")  # queue "emails"
        urgent.enqueue(1)                               # queue "default"
        assert drain(queues=["default"]) == 1
        assert mailoutbox == []
        assert drain(queues=["emails"]) == 1
        assert len(mailoutbox) == 1

    def test_each_call_is_a_recognisable_worker(self):
        first = urgent.enqueue(1)
        drain()
        second = urgent.enqueue(2)
        run_once()
        first.refresh()
        second.refresh()
        [a], [b] = first.worker_ids, second.worker_ids
        assert a.startswith("testing-") and b.startswith("testing-") and a != b

    def test_doc_database_error_inside_atomic_fails_only_the_job(self):
        create_user_atomic.enqueue("ada")
        failing = create_user_atomic.enqueue("ada")
        assert drain() == 2
        failing.refresh()
        assert failing.status == TaskResultStatus.FAILED
        assert failing.errors[0].exception_class_path == "django.db.utils.IntegrityError"

    def test_does_not_leak_file_descriptors(self):
        if not os.path.isdir("/proc/self/fd"):
            pytest.skip("needs /proc/self/fd")
        drain()  # warm up: connections, imports
        before = len(os.listdir("/proc/self/fd"))
        for n in range(20):
            urgent.enqueue(n)
            drain()
            run_once()
        assert len(os.listdir("/proc/self/fd")) <= before


@pytest.mark.django_db
class TestInATestTransaction(Scenarios):
    in_test_transaction = True

    def test_database_error_outside_atomic_breaks_the_test_transaction(self):
        create_user.enqueue("ada")
        create_user.enqueue("ada")
        with pytest.raises(TransactionManagementError):
            drain()


@pytest.mark.django_db(transaction=True)
class TestWithTransactionTrue(Scenarios):
    in_test_transaction = False

    def test_database_error_outside_atomic_fails_only_the_job(self):
        create_user.enqueue("ada")
        failing = create_user.enqueue("ada")
        assert drain() == 2
        failing.refresh()
        assert failing.status == TaskResultStatus.FAILED
        assert not Job.objects.held().exists()

    def test_task_enqueued_is_sent_at_once(self, enqueued):
        result = send_welcome_email.enqueue("ada@example.com")
        assert enqueued == [result.id]


@pytest.fixture
def enqueued():
    heard = []

    def receiver(sender, task_result, **kwargs):
        heard.append(task_result.id)

    task_enqueued.connect(receiver)
    yield heard
    task_enqueued.disconnect(receiver)


@pytest.mark.django_db
def test_doc_task_enqueued_waits_for_the_commit(enqueued, django_capture_on_commit_callbacks):
    send_welcome_email.enqueue("ada@example.com")
    assert enqueued == []                       # the test transaction never commits
    with django_capture_on_commit_callbacks(execute=True):
        result = send_welcome_email.enqueue("bob@example.com")
    assert enqueued == [result.id]


@pytest.mark.django_db
def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"queues=\['emails'\]"):
        drain(queues="emails")
    with pytest.raises(ValueError, match="nope"):
        drain(queues=["nope"])
    with pytest.raises(ValueError, match="max_jobs must be"):
        drain(max_jobs=-1)


@override_settings(TASKS=IMMEDIATE)
def test_drain_needs_a_django_tasks_backend():
    with pytest.raises(ImproperlyConfigured, match="ImmediateBackend, which has no queue"):
        drain()


@override_settings(TASKS=IMMEDIATE)
def test_doc_immediate_backend_runs_the_task_in_enqueue(mailoutbox):
    result = send_welcome_email.enqueue("ada@example.com")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "ada@example.com"
    assert len(mailoutbox) == 1


@override_settings(TASKS=IMMEDIATE)
def test_immediate_backend_neither_retries_nor_defers():
    result = sync_account.enqueue(1)            # max_attempts=3 under a worker
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 1
    with pytest.raises(InvalidTask, match="run_after"):
        send_welcome_email.using(run_after=timedelta(minutes=1)).enqueue("ada@example.com")


@override_settings(TASKS={"default": {
    "BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}})
def test_django_backends_need_your_queues_listed():
    with pytest.raises(InvalidTask, match="emails"):
        send_welcome_email.enqueue("ada@example.com")


@override_settings(TASKS=DUMMY)
def test_doc_dummy_backend_only_records_the_call(mailoutbox):
    send_welcome_email.enqueue("ada@example.com")
    [result] = default_task_backend.results
    assert result.task.func is send_welcome_email.func
    assert result.args == ["ada@example.com"]
    assert result.status == TaskResultStatus.READY
    assert mailoutbox == []


@override_settings(TASKS=IMMEDIATE)
def test_our_task_options_need_our_backend_when_the_task_is_defined():
    with pytest.raises(TypeError, match="max_attempts"):
        @task(max_attempts=3)
        def flaky():
            pass


class DjangoTestCaseTests(TestCase):
    """Django's TestCase is a test transaction too."""

    def test_drain_and_captured_on_commit_callbacks(self):
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            result = welcome_all.enqueue(["ada@example.com"])
        self.assertEqual(len(callbacks), 1)          # task_enqueued, sent at the commit
        self.assertEqual(drain(), 2)
        result.refresh()
        self.assertEqual(result.return_value, 1)
        self.assertFalse(Job.objects.held().exists())
