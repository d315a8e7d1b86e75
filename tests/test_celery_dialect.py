"""Celery's task options on our @task: the mapping, its conflicts, and ported tasks run
by a real worker loop (django_tasks.testing.drain) on SQLite and PostgreSQL."""

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from django.tasks import task
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

import django_tasks
from django_tasks import MaxRetriesExceededError, Retry, TaskContext, WorkerLost
from django_tasks.jobs.messages import Message, Start
from django_tasks.jobs.policy import failure_outcome, job_result
from django_tasks.models import Job
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


def _context(t, attempt, max_attempts=0):
    """The context attempt ``attempt`` of a job of ``t`` gets (max_attempts: the job's)."""
    message = _message(t, attempt)
    return TaskContext(task_result=job_result(message, t), lease="l", worker_id="w",
                       max_attempts=max_attempts)


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


def test_retry_kwargs_set_the_autoretry_limit_and_fixed_delay():
    t = task(autoretry_for=(OSError,), retry_kwargs={"max_retries": 5, "countdown": 7})(plain)
    assert retry_options(t) == {
        "max_attempts": 6, "retry_on": (OSError,), "backoff": 7.0, "backoff_max": 7.0,
        "jitter": False, "retry_delay": 180.0, "takes_context": False}
    # With retry_backoff the backoff wins over countdown, as in Celery.
    t = task(autoretry_for=(OSError,), retry_backoff=2, retry_kwargs={"countdown": 7})(plain)
    assert (t.backoff, t.backoff_max, t.jitter) == (2.0, 600.0, True)
    # max_retries=None is Celery's "the task's own", not "forever".
    assert task(autoretry_for=(OSError,), retry_kwargs={"max_retries": None})(plain) \
        .max_attempts == 4
    assert task(autoretry_for=(OSError,), retry_kwargs={})(plain).max_attempts == 4


def test_dont_autoretry_for_maps_to_dont_retry_on():
    t = task(autoretry_for=(OSError,), dont_autoretry_for=FileNotFoundError)(plain)
    assert (t.retry_on, t.dont_retry_on) == ((OSError,), (FileNotFoundError,))
    assert task()(plain).dont_retry_on == ()
    assert task(max_attempts=2, dont_retry_on=[ValueError])(plain).dont_retry_on == (ValueError,)


def test_reject_on_worker_lost_lists_worker_lost_among_the_retried():
    assert task(reject_on_worker_lost=True)(plain).retry_on == (Retry, WorkerLost)
    t = task(reject_on_worker_lost=True, autoretry_for=(OSError,))(plain)
    assert t.retry_on == (OSError, WorkerLost)
    assert task(reject_on_worker_lost=True, autoretry_for=Exception)(plain).retry_on == (
        Exception,)  # already covered
    # False is Celery's default: accepted, the Celery defaults apply, WorkerLost fails.
    assert task(reject_on_worker_lost=False)(plain).retry_on == (Retry,)


def test_the_celery_flag_is_set_by_celery_options_only_and_kept_by_copies():
    assert task(max_retries=1)(plain).celery is True
    assert task(acks_late=True)(plain).celery is False
    assert task(max_attempts=3, takes_context=True)(with_context).celery is False
    t = celery_tasks.autoretry_with_kwargs
    assert t.using(priority=1).celery is True and pickle.loads(pickle.dumps(t)).celery is True


def test_maxretriesexceedederror_is_exported():
    assert django_tasks.MaxRetriesExceededError is MaxRetriesExceededError
    assert "MaxRetriesExceededError" in django_tasks.__all__
    assert issubclass(MaxRetriesExceededError, django_tasks.TasksError)


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
    ({"autoretry_for": (OSError,), "retry_kwargs": {"exc": ValueError()}}, plain,
     "retry_kwargs['exc'] is not supported: retry_kwargs takes 'max_retries' and "
     "'countdown'"),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"queue": "slow"}}, plain,
     "retry_kwargs['queue'] is not supported"),
    ({"autoretry_for": (OSError,), "retry_kwargs": [("max_retries", 3)]}, plain,
     "retry_kwargs must be a dict"),
    ({"retry_kwargs": {"max_retries": 5}}, plain, "retry_kwargs={'max_retries': 5} applies "
     "to autoretries only: add autoretry_for=(...), or remove it"),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"max_retries": 5}, "max_retries": 3},
     plain, "retry_kwargs={'max_retries': 5} and max_retries=3 set the same limit"),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"max_retries": 5}, "max_attempts": 2},
     plain, "retry_kwargs={'max_retries': 5} (Celery's option) and max_attempts=2 (ours) set "
     "the same thing; pass one of them: max_retries=5 is max_attempts=6"),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"max_retries": -2}}, plain,
     "retry_kwargs['max_retries'] must be a whole number >= 0"),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"countdown": "5"}}, plain,
     "retry_kwargs['countdown'] must be a number of seconds >= 0; got '5'."),
    ({"autoretry_for": (OSError,), "retry_kwargs": {"countdown": 5}, "backoff": 2}, plain,
     "retry_kwargs={'countdown': 5} (Celery's option) and backoff=2 (ours) set the same "
     "thing; pass one of them: countdown=5 is backoff=backoff_max=5, jitter=False."),
    ({"autoretry_for": (OSError,), "dont_autoretry_for": "ValueError"}, plain,
     "dont_autoretry_for must be a tuple of exception classes"),
    ({"dont_autoretry_for": (ValueError,)}, plain, "dont_autoretry_for=(<class "
     "'ValueError'>,) only narrows autoretry_for: add autoretry_for=(...)"),
    ({"dont_autoretry_for": (ValueError,), "dont_retry_on": ()}, plain,
     "dont_autoretry_for=(<class 'ValueError'>,) (Celery's option) and dont_retry_on=() "
     "(ours) set the same thing"),
    ({"dont_retry_on": "ValueError"}, plain, "dont_retry_on must be a tuple of exception "
     "classes"),
    ({"reject_on_worker_lost": 1}, plain, "reject_on_worker_lost must be True or False"),
    ({"reject_on_worker_lost": True, "retry_on": (OSError,)}, plain,
     "reject_on_worker_lost=True (Celery's option) and retry_on=(<class 'OSError'>,) (ours) "
     "set the same thing; pass one of them: reject_on_worker_lost=True is WorkerLost listed "
     "in retry_on."),
    ({"reject_on_worker_lost": True, "autoretry_for": (OSError,),
      "dont_autoretry_for": (Exception,)}, plain, "reject_on_worker_lost=True and "
     "dont_autoretry_for=(<class 'Exception'>,) contradict each other"),
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


def test_dont_autoretry_for_wins_over_autoretry_for_but_not_over_self_retry():
    t = task(autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,),
             default_retry_delay=3)(plain)
    assert _delays(t, FileNotFoundError(), 1) == ["FAILED"]  # a subclass of OSError
    assert _delays(t, ConnectionError(), 1) == [3.0]
    t = task(bind=True, autoretry_for=(OSError,), dont_autoretry_for=(Exception,))(bound)
    assert _delays(t, Retry(countdown=1, exc=OSError()), 1) == [1.0]
    # Ours: any Exception but ValueError.
    t = task(max_attempts=2, dont_retry_on=(ValueError,), backoff=1, jitter=False)(plain)
    assert _delays(t, KeyError(), 1) == [1.0]
    assert _delays(t, ValueError(), 1) == ["FAILED"]


def test_reject_on_worker_lost_retries_a_lost_worker_within_max_retries():
    t = task(reject_on_worker_lost=True, max_retries=1, default_retry_delay=2)(plain)
    assert _delays(t, WorkerLost(), 2) == [2.0, "FAILED"]
    assert _delays(t, ValueError(), 1) == ["FAILED"]


def test_celery_self_retry_on_the_last_attempt_raises_max_retries_exceeded():
    t = celery_tasks.catches_max_retries  # max_retries=1: attempts 1 and 2
    with pytest.raises(Retry):
        _context(t, 1).retry()
    with pytest.raises(MaxRetriesExceededError) as info:
        _context(t, 2).retry()
    assert str(info.value).startswith(f"Can't retry {t.module_path}[j] args:[] kwargs:{{}}")
    assert (info.value.task_args, info.value.task_kwargs) == ([], {})
    with pytest.raises(LookupError):  # with exc: exc itself, as Celery re-raises it
        _context(t, 2).retry(exc=LookupError("gone"))
    # The job's max_attempts, as the worker reads it, decides (e.g. after a retry by hand).
    with pytest.raises(MaxRetriesExceededError):
        _context(t, 1, max_attempts=1).retry()
    with pytest.raises(Retry):
        _context(t, 2, max_attempts=3).retry()
    assert _context(t, 2, max_attempts=3).max_retries == 2


def test_our_context_retry_leaves_the_last_attempt_to_the_worker():
    t = task(takes_context=True, max_attempts=2)(with_context)
    with pytest.raises(Retry):
        _context(t, 2).retry()  # the worker fails the job (with Retry), as before
    with pytest.raises(Retry):
        _context(t, 2).retry(throw=False)  # no retry left: raises even so


def test_retry_throw_false_returns_the_retry_and_keeps_it_for_the_worker():
    context = _context(celery_tasks.retries_without_throwing, 1)
    assert context.retry_pending is None
    returned = context.retry(countdown=3, throw=False)
    assert isinstance(returned, Retry) and returned.countdown == 3
    assert context.retry_pending is returned
    with pytest.raises(TypeError, match=r"retry\(throw=...\) must be True or False; got 0"):
        context.retry(throw=0)


def test_update_state_refuses_what_does_not_map():
    context = _context(celery_tasks.reports_state, 1)
    with pytest.raises(TypeError, match=r"update_state\(task_id='other'\) names another job"):
        context.update_state(task_id="other", state="PROGRESS")
    with pytest.raises(TypeError, match=r"update_state\(state=...\) must be a string"):
        context.update_state(state=5)
    with pytest.raises(TypeError, match=r"update_state\(\) got traceback: only task_id"):
        context.update_state(state="PROGRESS", traceback="tb")


def test_context_retry_raises_by_itself():
    context = _context(celery_tasks.fetch_feed, 1)
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
    # Celery's: self.retry() without exc on the last attempt raises MaxRetriesExceededError.
    last = job.errors[-1]
    assert last["exception_class_path"] == "django_tasks.exceptions.MaxRetriesExceededError"
    assert last["message"].startswith(
        f"Can't retry tests.celery_tasks.default_retry[{result.id}] args:[] kwargs:{{}}")


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


@pytest.mark.django_db
def test_retry_kwargs_countdown_and_max_retries_drive_autoretries():
    result = celery_tasks.autoretry_with_kwargs.enqueue()
    drain()
    job = _job(result)
    assert job.status == "READY" and round(_waits(job)) == 4  # countdown, fixed
    drain(now=job.available_at + timedelta(seconds=1))
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 2)  # retry_kwargs' max_retries=1
    assert job.errors[-1]["exception_class_path"] == "builtins.ConnectionRefusedError"


@pytest.mark.django_db
def test_dont_autoretry_for_fails_at_once_what_autoretry_for_would_retry():
    missing = celery_tasks.skips_some_errors.enqueue(True)
    refused = celery_tasks.skips_some_errors.enqueue(False)
    assert drain() == 2
    assert (_job(missing).status, _job(missing).attempts) == ("FAILED", 1)
    assert _job(missing).errors[-1]["exception_class_path"] == "builtins.FileNotFoundError"
    assert _job(refused).status == "READY" and round(_waits(_job(refused))) == 3


def _lose_worker(result):
    """Claim and start ``result``'s job as worker "lost", then rescue it: the attempt
    ends with WorkerLost, as when a real worker dies mid-run."""
    backend = result.task.get_backend()
    [message] = backend.broker.claim("lost", "lost-lease", ["default"], 1)
    assert message.id == result.id
    backend.store.record_starts("lost", [Start(message.id, message.lease,
                                               timezone.now().isoformat())])
    counts = backend.store.rescue("lost", "worker lost was killed")
    assert counts.retried + counts.failed == 1  # started: its attempt ended


@pytest.mark.django_db(transaction=True)
def test_reject_on_worker_lost_runs_a_lost_workers_job_again():
    result = celery_tasks.rerun_when_lost.enqueue()
    _lose_worker(result)
    job = _job(result)
    assert (job.status, job.attempts) == ("READY", 1)
    assert job.errors[-1]["exception_class_path"] == "django_tasks.exceptions.WorkerLost"
    assert round(_waits(job)) == 2  # default_retry_delay, as an autoretry
    drain(now=timezone.now() + timedelta(seconds=3))
    result.refresh()
    assert (result.status, result.return_value, result.attempts) == ("SUCCESSFUL", "ran", 2)


@pytest.mark.django_db(transaction=True)
def test_without_reject_on_worker_lost_a_lost_workers_job_fails():
    result = celery_tasks.acks_late_plain.enqueue(1)
    _lose_worker(result)
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 1)
    assert job.errors[-1]["exception_class_path"] == "django_tasks.exceptions.WorkerLost"


@pytest.mark.django_db
def test_self_retry_raises_max_retries_exceeded_on_the_last_attempt_and_it_can_be_caught():
    result = celery_tasks.catches_max_retries.enqueue("x")
    drain()
    job = _job(result)
    assert job.status == "READY" and job.errors[-1]["exception_class_path"] == (
        "django_tasks.exceptions.Retry")
    drain(now=timezone.now() + timedelta(seconds=2))
    result.refresh()
    assert (result.status, result.attempts) == ("SUCCESSFUL", 2)
    assert result.return_value["gave_up_at"] == 1 and result.return_value["args"] == ["x"]
    assert result.return_value["error"].startswith(
        f"Can't retry tests.celery_tasks.catches_max_retries[{result.id}] args:['x']")


@pytest.mark.django_db
def test_max_retries_exceeded_follows_the_jobs_max_attempts_after_a_retry_by_hand():
    result = celery_tasks.default_retry.enqueue()  # bind alone: max_retries=3
    later = timezone.now()
    for _ in range(4):
        drain(now=later)
        later += timedelta(seconds=181)
    assert (_job(result).status, _job(result).attempts) == ("FAILED", 4)
    assert result.task.get_backend().retry([result.id]) == [result.id]  # max_attempts 5
    drain()
    job = _job(result)
    # One more attempt, and its self.retry() is the last: the job's numbers, not the task's.
    assert (job.status, job.attempts, job.max_attempts) == ("FAILED", 5, 5)
    assert job.errors[-1]["exception_class_path"].endswith(".MaxRetriesExceededError")
    assert "attempt 5 of max_attempts 5 (max_retries=4)" in job.errors[-1]["message"]


@pytest.mark.django_db
def test_update_state_is_stored_as_progress():
    result = celery_tasks.reports_state.enqueue(4)
    drain()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    progress = dict(result.progress)
    assert datetime.fromisoformat(progress.pop("updated_at"))
    assert progress == {"state": "PROGRESS", "meta": {"current": 4, "total": 4},
                        "current": 4, "total": 4, "message": "PROGRESS"}


@pytest.mark.django_db
def test_retry_throw_false_retries_the_job_whatever_the_task_does_next():
    returned = celery_tasks.retries_without_throwing.enqueue("return")
    raised = celery_tasks.retries_without_throwing.enqueue("raise")
    assert drain() == 2
    for result, error in ((returned, "django_tasks.exceptions.Retry"),
                          (raised, "builtins.KeyError")):
        job = _job(result)
        assert (job.status, job.attempts, job.return_value) == ("READY", 1, None)
        assert round(_waits(job)) == 3 and job.errors[-1]["exception_class_path"] == error
    assert _job(raised).errors[-1]["message"] == "'after Retry'"
    assert drain(now=timezone.now() + timedelta(seconds=4)) == 2
    for result in (returned, raised):
        result.refresh()
        assert (result.status, result.return_value, result.attempts) == (
            "SUCCESSFUL", "second run", 2)


@pytest.mark.django_db
def test_retry_throw_false_without_a_retry_left_raises():
    result = celery_tasks.retries_without_throwing.enqueue("again")
    drain()
    drain(now=timezone.now() + timedelta(seconds=4))
    job = _job(result)
    assert (job.status, job.attempts) == ("FAILED", 2)
    assert job.errors[-1]["exception_class_path"].endswith(".MaxRetriesExceededError")


@pytest.mark.django_db
def test_our_context_retry_throw_false_retries_then_the_worker_fails_it():
    result = celery_tasks.ours_retries_without_throwing.enqueue()
    drain()
    assert (_job(result).status, _job(result).attempts) == ("READY", 1)
    drain(now=timezone.now() + timedelta(seconds=4))
    job = _job(result)  # max_attempts=2: the second retry(throw=False) raises Retry
    assert (job.status, job.attempts) == ("FAILED", 2)
    assert job.errors[-1]["exception_class_path"] == "django_tasks.exceptions.Retry"
