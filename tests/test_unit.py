"""Pure logic: serialization, retry maths, options. No database."""

import decimal
import math
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.tasks.exceptions import InvalidTask

from django_tasks.conf import BackendOptions
from django_tasks.exceptions import ArgumentNotSerializable, Retry
from django_tasks.retry import backoff_delay, next_attempt_at
from django_tasks.serialization import check_arguments, check_return_value

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def f(when, amount=None):
    pass


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((NOW,), {}, "argument 'when' (position 0) is a datetime.datetime"),
        ((1,), {"amount": decimal.Decimal("1.5")}, "argument 'amount' is a decimal.Decimal"),
        ((1,), {"amount": {1, 2}}, "argument 'amount' is a builtins.set"),
        ((1,), {"amount": b"x"}, "argument 'amount' is a builtins.bytes"),
        ((1,), {"amount": {1: "a"}}, "argument 'amount' has the key 1 of type int"),
        ((1,), {"amount": [1, math.nan]}, "argument 'amount'[1] nan is not valid JSON"),
        (({"a": [object()]},), {}, "argument 'when' (position 0)['a'][0] is a builtins.object"),
    ],
)
def test_arguments_that_do_not_round_trip_are_named(args, kwargs, expected):
    with pytest.raises(ArgumentNotSerializable) as info:
        check_arguments(f, args, kwargs, task_name="t")
    assert expected in str(info.value)
    assert "Nothing was enqueued" in str(info.value)


def test_json_arguments_pass():
    check_arguments(f, ("x", 1, 2.5, True, None, [1, {"a": (1, 2)}]), {"amount": {"k": []}},
                    task_name="t")


def test_return_value_checked():
    check_return_value({"a": [1]}, task_name="t")
    with pytest.raises(TypeError, match=r"return value is a datetime\.datetime"):
        check_return_value(NOW, task_name="t")


def test_backoff_is_exponential_capped_and_jittered_upwards_of_half():
    assert [backoff_delay(a, backoff=2, backoff_max=10, jitter=False) for a in (1, 2, 3, 4)] == [
        2, 4, 8, 10]
    assert backoff_delay(3, backoff=2, backoff_max=100, jitter=True, rand=lambda: 0.0) == 4
    assert backoff_delay(3, backoff=2, backoff_max=100, jitter=True, rand=lambda: 1.0) == 8


def _next(exc, attempt=1, max_attempts=3, retry_on=()):
    return next_attempt_at(attempt=attempt, max_attempts=max_attempts, exc=exc, retry_on=retry_on,
                           backoff=1, backoff_max=60, jitter=False, now=NOW)


def test_retry_decisions():
    assert _next(ValueError()) == NOW + timedelta(seconds=1)
    assert _next(ValueError(), attempt=2) == NOW + timedelta(seconds=2)
    assert _next(ValueError(), attempt=3) is None  # attempts used up
    assert _next(ValueError(), retry_on=(ConnectionError,)) is None  # not a retryable type
    assert _next(ConnectionResetError(), retry_on=(ConnectionError,)) is not None
    assert _next(Retry(countdown=30), retry_on=(ConnectionError,)) == NOW + timedelta(seconds=30)
    assert _next(Retry(countdown=30), attempt=3) is None


def test_options_problems_are_collected_not_raised():
    opts = BackendOptions.parse({"ROUTES": "x", "POLL_INTERVAL": -1, "BOGUS": 1})
    assert len(opts.problems) == 3
    assert opts.poll_interval == 1.0


def test_routes_exact_then_glob():
    opts = BackendOptions.parse({"ROUTES": {"a.tasks.*": "q1", "a.tasks.x": "q2"}})
    assert opts.route("a.tasks.x") == "q2"
    assert opts.route("a.tasks.y") == "q1"
    assert opts.route("b.tasks.y") is None


def test_bad_task_options_are_refused():
    from django.tasks import task

    with pytest.raises(InvalidTask, match="max_attempts"):
        task(max_attempts=0)(f)
    with pytest.raises(InvalidTask, match="retry_on"):
        task(retry_on=("ConnectionError",))(f)
    with pytest.raises(InvalidTask, match="backoff"):
        task(backoff=-1)(f)
    assert task(retry_on=ConnectionError)(f).retry_on == (ConnectionError,)


def test_router_sends_only_our_models_to_the_task_database(settings):
    from django.contrib.auth.models import User

    from django_tasks.models import Job, Worker
    from django_tasks.routers import TasksRouter

    router = TasksRouter()
    settings.TASKS = {"default": {"BACKEND": "x", "OPTIONS": {"DATABASE": "tasks"}},
                      "other": {"BACKEND": "x", "OPTIONS": {"DATABASE": "jobs2"}}}
    assert router.db_for_read(Job) == "tasks" and router.db_for_write(Worker) == "tasks"
    assert router.db_for_read(User) is None and router.db_for_write(User) is None
    settings.TASKS_ROUTER_BACKEND = "other"
    assert router.db_for_read(Job) == "jobs2"
    settings.TASKS = {"default": {"BACKEND": "x"}}
    del settings.TASKS_ROUTER_BACKEND
    assert router.db_for_read(Job) == "default"


def test_workers_stepped_by_hand_do_not_leak_descriptors():
    import gc
    import os

    from django_tasks.worker import TaskWorker

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        TaskWorker(pool="inline")  # never started nor shut down, as in tests and drain()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def _double(x):
    return 2 * x


def test_every_public_name_imports_and_task_is_the_decorator():
    import django.tasks

    import django_tasks

    for name in django_tasks.__all__:
        assert getattr(django_tasks, name) is not None, name
    assert django_tasks.task is django.tasks.task  # not the django_tasks.task module
    double = django_tasks.task(max_attempts=2)(_double)
    assert isinstance(double, django_tasks.Task) and double.max_attempts == 2
    assert double.call(21) == 42


def test_a_worker_with_no_queue_to_serve_says_so(settings):
    from django_tasks.worker import TaskWorker

    settings.TASKS = {"default": {**settings.TASKS["default"], "QUEUES": []}}
    with pytest.raises(ImproperlyConfigured, match=r"QUEUES'\] is empty .* name them with -Q"):
        TaskWorker(pool="inline")
    assert TaskWorker(pool="inline", queues=["default"]).queues == ["default"]


def test_the_worker_loops_former_name_still_imports():
    import django_tasks.models
    from django_tasks.worker import TaskWorker, Worker

    assert Worker is TaskWorker  # as docs and projects imported it before the rename
    assert django_tasks.models.Worker is not TaskWorker  # the registry's row


def test_retry_delay_is_what_a_retry_without_countdown_waits():
    def at(exc, **kw):
        return next_attempt_at(attempt=1, max_attempts=3, exc=exc, retry_on=(), backoff=1,
                               backoff_max=60, jitter=False, now=NOW, **kw)

    assert at(Retry(), retry_delay=30) == NOW + timedelta(seconds=30)
    assert at(Retry(countdown=5), retry_delay=30) == NOW + timedelta(seconds=5)
    assert at(Retry()) == NOW + timedelta(seconds=1)  # None: the backoff
    assert at(ValueError(), retry_delay=30) == NOW + timedelta(seconds=1)  # only for Retry


def test_backoff_of_a_very_late_attempt_does_not_overflow():
    assert backoff_delay(5000, backoff=1, backoff_max=600, jitter=False) == 600
    assert backoff_delay(10**9, backoff=0, backoff_max=600, jitter=False) == 0


def test_outage_logs_once_backs_off_and_says_how_long_it_lasted(caplog):
    import logging

    from django_tasks.outage import Outage

    log = logging.getLogger("tests.outage")
    outage = Outage(log, "Thing unreachable", "Thing back")
    outage.recovered()  # no outage: nothing to say
    with caplog.at_level(logging.WARNING, logger="tests.outage"):
        delays = [outage.failed(ConnectionError(" refused\n")) for _ in range(8)]
        assert outage.since is not None and outage.lasted() >= 0
        outage.recovered("; done")
        assert outage.since is None and outage.lasted() == 0
        assert outage.failed(ConnectionError("again")) == 0.1  # the delay starts over
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages[0] == ("ERROR", "Thing unreachable (ConnectionError: refused); retrying")
    assert messages[1][0] == "WARNING" and messages[1][1].startswith("Thing back after ")
    assert messages[1][1].endswith("s; done")
    assert len(messages) == 3  # one line per outage, not per try


def test_job_ids_are_version_7_and_only_increase_within_a_process():
    import time
    import uuid

    from django_tasks.ids import uuid7

    ids = [uuid7() for _ in range(20000)]  # many within one millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {(u.version, u.variant) for u in ids} == {(7, uuid.RFC_4122)}
    assert abs((ids[-1].int >> 80) - time.time() * 1000) < 5000  # milliseconds since 1970


def test_a_rows_json_columns_are_decoded_each_into_a_new_object():
    """The engine decodes JSON columns once per claimed row; the empty list and object
    most rows hold are made without the parser, and never shared between rows (a
    message's ``worker_ids`` grows, a task may change its ``args``)."""
    from django_tasks.jobs.engine import Engine
    from django_tasks.jobs.rows import MessageRow

    def row(**json_columns):
        values = dict.fromkeys(MessageRow._fields)
        values.update(json_columns)
        return MessageRow(**values)

    first = Engine.decode(None, row(args="[]", kwargs="{}", worker_ids="[]", errors="[]",
                                    headers=None))
    assert (first.args, first.kwargs, first.worker_ids, first.errors, first.headers) == (
        [], {}, [], [], None)
    first.args.append(1)
    first.kwargs["a"] = 1
    second = Engine.decode(None, row(args="[]", kwargs="{}", worker_ids='["w1"]',
                                     errors='[{"message": "boom"}]', headers='{"trace": "t"}'))
    assert (second.args, second.kwargs) == ([], {})
    assert second.worker_ids == ["w1"] and second.errors == [{"message": "boom"}]
    assert second.headers == {"trace": "t"}
    assert first.args is not second.args
    spaced = Engine.decode(None, row(args="[ ]", kwargs='{"x": []}'))
    assert (spaced.args, spaced.kwargs) == ([], {"x": []})
