"""Celery's task options on our @task: the mapping, its conflicts, and ported tasks run
by a real worker loop (django_tasks.testing.drain) on SQLite and PostgreSQL."""

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from django.tasks import task
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from django_tasks import Retry, TaskContext, WorkerLost
from django_tasks.messages import Message
from django_tasks.models import Job
from django_tasks.outcomes import failure_outcome
from django_tasks.task import MAX_ATTEMPTS_LIMIT
from django_tasks.testing import drain
from tests import celery_tasks

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def plain(x=None):
    pass


def bound(self, x=None):
    pass


def with_context(context, x=None):
    pass


def no_params():
    pass


def retry_options(t):
    return {k: getattr(t, k) for k in ("max_attempts", "retry_on", "backoff", "backoff_max",
                                       "jitter", "retry_delay", "takes_context")}


# -- the mapping ---------------------------------------------------------------------


def test_native_options_are_unchanged():
    assert retry_options(task()(plain)) == {
        "max_attempts": 1, "retry_on": (), "backoff": 1.0, "backoff_max": 3600.0,
        "jitter": True, "retry_delay": None, "takes_context": False}
    t = task(max_attempts=5, retry_on=ConnectionError, backoff=2, backoff_max=60,
             jitter=False, takes_context=True)(with_context)
    assert retry_options(t) == {
        "max_attempts": 5, "retry_on": (ConnectionError,), "backoff": 2, "backoff_max": 60,
        "jitter": False, "retry_delay": None, "takes_context": True}
    assert t.bind is None


def test_bind_alone_gets_celerys_defaults():
    t = task(bind=True)(bound)
    # max_retries=3; only self.retry() retries; it waits default_retry_delay=180, fixed.
    assert retry_options(t) == {
        "max_attempts": 4, "retry_on": (Retry,), "backoff": 180.0, "backoff_max": 180.0,
        "jitter": False, "retry_delay": 180.0, "takes_context": True}


def test_celery_retry_options_map_onto_ours():
    t = task(bind=True, max_retries=5, default_retry_delay=30)(bound)
    assert (t.max_attempts, t.retry_on, t.retry_delay) == (6, (Retry,), 30.0)
    assert (t.backoff, t.backoff_max, t.jitter) == (30.0, 30.0, False)
    t = task(autoretry_for=(ConnectionError,), retry_backoff=True)(plain)
    assert retry_options(t) == {
        "max_attempts": 4, "retry_on": (ConnectionError,), "backoff": 1.0, "backoff_max": 600.0,
        "jitter": True, "retry_delay": 180.0, "takes_context": False}
    t = task(autoretry_for=OSError, retry_backoff=5, retry_backoff_max=40,
             retry_jitter=False)(plain)
    assert (t.retry_on, t.backoff, t.backoff_max, t.jitter) == ((OSError,), 5.0, 40.0, False)
    t = task(autoretry_for=(OSError,), retry_backoff=0, default_retry_delay=4)(plain)
    assert (t.backoff, t.backoff_max, t.jitter) == (4.0, 4.0, False)  # 0 is off, as in Celery
    assert task(max_retries=None)(plain).max_attempts == MAX_ATTEMPTS_LIMIT
    assert task(max_retries=0)(plain).max_attempts == 1


def test_our_options_fill_what_celery_options_leave_out():
    t = task(bind=True, max_attempts=2, retry_on=(ValueError,), backoff=3)(bound)
    assert (t.max_attempts, t.retry_on, t.backoff, t.takes_context) == (2, (ValueError,), 3, True)
    t = task(bind=True, retry_delay=None)(bound)
    assert t.retry_delay is None


def test_acks_late_is_accepted_and_changes_nothing():
    assert retry_options(task(acks_late=True)(plain)) == retry_options(task()(plain))
    with pytest.raises(InvalidTask, match=r"acks_late=False is not available: a job is "
                                          r"acknowledged only when its outcome is written"):
        task(acks_late=False)(plain)


def test_copies_and_pickles_keep_the_mapped_options():
    t = celery_tasks.fetch_feed
    copy = t.using(queue_name="emails", priority=3)
    assert retry_options(copy) == retry_options(t) and copy.bind is True
    back = pickle.loads(pickle.dumps(t))
    assert retry_options(back) == retry_options(t)


@pytest.mark.parametrize(("options", "func", "message"), [
    ({"max_retries": 3, "max_attempts": 4}, plain,
     "max_retries=3 (Celery's option) and max_attempts=4 (ours) set the same thing; pass one "
     "of them: max_retries=3 is max_attempts=4 (attempts include the first run)."),
    ({"max_retries": 3, "max_attempts": 1}, plain, "max_retries=3 (Celery's option) and "
     "max_attempts=1 (ours)"),
    ({"autoretry_for": (OSError,), "retry_on": ()}, plain,
     "autoretry_for=(<class 'OSError'>,) (Celery's option) and retry_on=() (ours) set the "
     "same thing; pass one of them: autoretry_for=(<class 'OSError'>,) is retry_on="),
    ({"retry_backoff": True, "backoff": 2}, plain, "retry_backoff=True (Celery's option) and "
     "backoff=2 (ours) set the same thing; pass one of them: retry_backoff=True is backoff=1"),
    ({"retry_backoff_max": 60, "backoff_max": 60}, plain, "retry_backoff_max=60 (Celery's "
     "option) and backoff_max=60 (ours)"),
    ({"retry_jitter": False, "jitter": True}, plain, "retry_jitter=False (Celery's option) "
     "and jitter=True (ours)"),
    ({"default_retry_delay": 30, "retry_delay": 10}, plain, "default_retry_delay=30 "
     "(Celery's option) and retry_delay=10 (ours) set the same thing; pass one of them: "
     "default_retry_delay=30 is retry_delay=30."),
    ({"bind": False, "takes_context": True}, with_context, "bind=False and takes_context=True "
     "contradict each other (bind=True is Celery's takes_context=True); pass one of them."),
    ({"bind": True}, no_params, "bind=True passes the context as the first argument, but the "
     "function has no first positional parameter: add one (Celery calls it self)."),
    ({"max_retries": -1}, plain, "max_retries must be a whole number >= 0, or None"),
    ({"autoretry_for": ("ConnectionError",)}, plain, "autoretry_for must be a tuple of "
     "exception classes"),
    ({"retry_backoff": "yes"}, plain, "retry_backoff must be True"),
    ({"default_retry_delay": -5}, plain, "default_retry_delay must be a number of seconds"),
    ({"retry_jitter": 1}, plain, "retry_jitter must be True or False"),
    ({"bind": "yes"}, bound, "bind must be True or False"),
])
def test_conflicts_and_bad_values_name_both_options_and_the_fix(options, func, message):
    with pytest.raises(InvalidTask) as info:
        task(**options)(func)
    assert str(info.value).startswith(f"{func.__module__}.{func.__qualname__}: ")
    assert message in str(info.value)


def test_native_max_attempts_is_bounded_by_the_column():
    with pytest.raises(InvalidTask, match=f"<= {MAX_ATTEMPTS_LIMIT}"):
        task(max_attempts=MAX_ATTEMPTS_LIMIT + 1)(plain)


# -- the policy, with time as a parameter ----------------------------------------------


def _message(t, attempt):
    return Message(id="j", lease="l", task_path=t.module_path, queue_name="default",
                   priority=0, backend="default", args=[], kwargs={}, attempt=attempt,
                   max_attempts=t.max_attempts, worker_ids=["w"] * attempt, errors=[],
                   enqueued_at=None, started_at=None, run_after=None, available_at=None)


def _delays(t, exc, attempts):
    out = []
    for attempt in range(1, attempts + 1):
        outcome = failure_outcome(_message(t, attempt), exc, "w", now=NOW, task=t,
                                  notify=False)
        out.append(outcome.retry_delay if outcome.status == "READY" else outcome.status)
    return out


def test_autoretry_delays_exponential_then_capped_then_failed():
    exc = ConnectionResetError("reset")
    assert _delays(celery_tasks.flaky_backoff, exc, 4) == [2.0, 4.0, 5.0, "FAILED"]


def test_autoretry_without_backoff_waits_default_retry_delay_fixed():
    assert _delays(celery_tasks.flaky_fixed, ConnectionError(), 3) == [7.0, 7.0, "FAILED"]


def test_self_retry_waits_countdown_else_default_retry_delay():
    t = celery_tasks.fetch_feed
    assert _delays(t, Retry(), 4) == [30.0, 30.0, 30.0, "FAILED"]
    assert _delays(t, Retry(countdown=2), 1) == [2.0]
    assert _delays(t, ValueError(), 1) == ["FAILED"]  # without autoretry_for: not retried
    # With retry_backoff, self.retry() without countdown still waits default_retry_delay.
    t = task(bind=True, retry_backoff=True, default_retry_delay=9)(bound)
    assert _delays(t, Retry(), 1) == [9.0]



def test_a_lost_worker_fails_the_job_unless_autoretry_for_lists_worker_lost():
    assert _delays(celery_tasks.fetch_feed, WorkerLost(), 1) == ["FAILED"]  # WorkerLostError
    t = task(autoretry_for=(ConnectionError, WorkerLost), default_retry_delay=3)(plain)
    assert _delays(t, WorkerLost(), 1) == [3.0]


def test_context_retry_raises_by_itself():
    context = TaskContext.__new__(TaskContext)
    with pytest.raises(Retry) as info:
        context.retry(countdown=3, exc=KeyError("k"))
    assert (info.value.countdown, type(info.value.exc)) == (3, KeyError)
    with pytest.raises(Retry) as info:
        context.retry(eta=timezone.now() + timedelta(seconds=60))
    assert 58 < info.value.countdown <= 60


# -- ported tasks, run by a worker -------------------------------------------------------


def _job(result):
    return Job.objects.get(pk=result.id)


def _waits(job):
    """Seconds from the last failure to the next run (database vs worker clock: ~ms)."""
    occurred = datetime.fromisoformat(job.errors[-1]["occurred_at"])
    return (job.available_at - occurred).total_seconds()


@pytest.mark.django_db
def test_celery_task_ported_verbatim_retries_counting_from_zero():
    result = celery_tasks.fetch_feed.enqueue("https://example.com/feed", fail_times=2)
    assert drain() == 1
    job = _job(result)
    assert (job.status, job.attempts) == ("READY", 1)
    assert 29 < _waits(job) < 31  # default_retry_delay=30, fixed
    assert drain() == 0  # not due yet
    # Each retry is due 30 s after the attempt before it: both are due a minute from now.
    assert drain(now=timezone.now() + timedelta(seconds=61)) == 2
    result.refresh()
    assert result.status == "SUCCESSFUL" and result.attempts == 3
    assert [e.message for e in result.errors] == [
        "https://example.com/feed down at retry 0", "https://example.com/feed down at retry 1"]
    assert {e.exception_class for e in result.errors} == {ConnectionError}
    value = result.return_value
    assert value["retries"] == 2 and value["id"] == result.id
    assert value["args"] == ["https://example.com/feed"] and value["kwargs"] == {"fail_times": 2}
    assert value["task"] == "tests.celery_tasks.fetch_feed" and value["max_retries"] == 3
    assert value["hostname"].startswith("testing-")


@pytest.mark.django_db
def test_bare_self_retry_without_raise_retries():
    result = celery_tasks.bare_retry.enqueue()
    later = timezone.now()
    for _ in range(3):
        later += timedelta(seconds=6)
        drain(now=later)
    result.refresh()
    assert (result.status, result.return_value, result.attempts) == ("SUCCESSFUL", 2, 3)


@pytest.mark.django_db
def test_exhausted_retries_fail_with_the_given_exc():
    result = celery_tasks.gives_up.enqueue()
    later = timezone.now()
    for _ in range(4):
        later += timedelta(seconds=2)
        drain(now=later)
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 3)  # max_retries=2: 1 run + 2 retries
    assert [e["exception_class_path"] for e in job.errors] == ["builtins.LookupError"] * 3
    assert job.errors[-1]["message"] == "still missing at retry 2"
    result.refresh()
    assert result.errors[-1].exception_class is LookupError


@pytest.mark.django_db
def test_bind_alone_retries_three_times_180_s_apart():
    result = celery_tasks.default_retry.enqueue()
    drain()
    job = _job(result)
    assert job.status == "READY" and 179 < _waits(job) < 181
    later = timezone.now()
    for _ in range(3):
        later += timedelta(seconds=181)
        drain(now=later)
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 4)
    assert job.errors[-1]["exception_class_path"] == "django_tasks.exceptions.Retry"


@pytest.mark.django_db
def test_exceptions_are_not_retried_without_autoretry_for():
    result = celery_tasks.raises_unlisted.enqueue()
    drain()
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 1)
    assert job.errors[0]["exception_class_path"] == "builtins.ValueError"


@pytest.mark.django_db
def test_exceptions_not_listed_in_autoretry_for_are_not_retried():
    result = celery_tasks.wrong_error.enqueue()
    drain()
    assert (_job(result).status, _job(result).attempts) == ("FAILED", 1)


@pytest.mark.django_db
def test_autoretry_for_with_backoff_and_no_jitter_waits_2_4_5_then_fails():
    result = celery_tasks.flaky_backoff.enqueue()
    waits = []
    later = timezone.now()
    for _ in range(4):
        drain(now=later)
        job = _job(result)
        if job.status == "READY":
            waits.append(round(_waits(job)))
            later = job.available_at + timedelta(seconds=1)
    assert waits == [2, 4, 5]
    assert (job.status, job.attempts) == ("FAILED", 4)
    assert job.errors[-1]["exception_class_path"] == "builtins.ConnectionResetError"


@pytest.mark.django_db
def test_autoretry_for_without_backoff_waits_default_retry_delay():
    result = celery_tasks.flaky_fixed.enqueue()
    drain()
    job = _job(result)
    assert job.status == "READY" and round(_waits(job)) == 7


@pytest.mark.django_db
def test_acks_late_tasks_run():
    a = celery_tasks.acks_late_task.enqueue(1)
    b = celery_tasks.acks_late_plain.delay(21)
    assert drain() == 2
    a.refresh()
    b.refresh()
    assert a.return_value == ["tests.celery_tasks.acks_late_task", 1]
    assert b.return_value == 42
