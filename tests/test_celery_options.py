"""Every Celery task and calling option has an answer, and the porting names work:
shared_task, AsyncResult, state/result, revoke (terminate), forget, link/link_error,
ignore_result, worker -l/-n/--autoscale."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta

import pytest
from django.tasks import task
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist

from django_tasks import AsyncResult, shared_task
from django_tasks.celery_options import CALL_OPTIONS, STATUSES, TASK_OPTIONS
from django_tasks.models import Job
from django_tasks.states import CANCELLED, RUNNING
from tests import tasks
from tests.helpers import ROOT, start_worker, wait_for
from tests.test_backend import drain

db = pytest.mark.django_db(transaction=True)


def plain(x=0):
    return x


PLAIN_PATH = f"{__name__}.plain"


# -- the table ---------------------------------------------------------------------------


def doc_tables() -> dict[str, dict[str, str]]:
    """The two tables of docs/coming-from-celery.md "Every Celery option":
    {"@task": {option: status}, "apply_async": {...}}."""
    text = (ROOT / "docs" / "coming-from-celery.md").read_text()
    section = text[text.index("## Every Celery option"):text.index("## Celery's task options")]
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in section.splitlines():
        head = re.match(r"\| `(@task|apply_async)` option \|", line)
        if head:
            current = tables.setdefault(head.group(1), {})
            continue
        row = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2).split(":")[0].strip()
    return tables


def test_the_docs_list_every_option_with_the_answer_the_code_gives():
    tables = doc_tables()
    assert tables["@task"] == {k: a.status for k, a in TASK_OPTIONS.items()}
    assert tables["apply_async"] == {k: a.status for k, a in CALL_OPTIONS.items()}
    assert {a.status for a in (*TASK_OPTIONS.values(), *CALL_OPTIONS.values())} <= set(STATUSES)


#: A value each refused/accepted-elsewhere option might be given in Celery code.
SAMPLES = {"compression": "gzip", "throws": (KeyError,), "base": object,
           "store_eager_result": True, "pydantic": True,
           "exchange": "tasks", "routing_key": "tasks.add", "headers": {"a": 1},
           "task_id": "4b2c...", "ignore_result": True, "time_limit": 5,
           "soft_time_limit": 5, "shadow": "other", "producer": object(),
           "connection": object(), "publisher": object(), "router": object()}


@pytest.mark.parametrize("option", [k for k, a in TASK_OPTIONS.items()
                                    if a.status == "refused"])
def test_a_refused_task_option_is_one_line_naming_it(option):
    with pytest.raises(InvalidTask) as caught:
        task(**{option: SAMPLES[option]})(plain)
    message = str(caught.value)
    assert message.startswith(f"{PLAIN_PATH}: {option}= is not ")
    assert "\n" not in message


@db
@pytest.mark.parametrize("option", [k for k, a in CALL_OPTIONS.items()
                                    if a.status == "refused"])
def test_a_refused_call_option_is_one_line_naming_it_and_stores_nothing(option):
    with pytest.raises(TypeError) as caught:
        tasks.add.apply_async((1, 2), **{option: SAMPLES[option]})
    message = str(caught.value)
    assert message.startswith(f"tests.tasks.add.apply_async(): {option}= is not ")
    assert "\n" not in message
    assert not Job.objects.exists()


ACCEPTED_TASK = {"acks_late": (True, False), "store_errors_even_if_ignored": (False, None),
                 "track_started": (True, "yes"), "acks_on_failure_or_timeout": (True, False),
                 "typing": (True, False), "serializer": ("json", "pickle"),
                 "shared": (True, False), "lazy": (False, 1), "send_events": (True, None),
                 "trail": (True, None), "resultrepr_maxsize": (1024, 0),
                 "name": (PLAIN_PATH, "tasks.plain")}


def test_every_accepted_task_option_is_sampled():
    assert set(ACCEPTED_TASK) == {k for k, a in TASK_OPTIONS.items() if a.status == "accepted"}


@pytest.mark.parametrize("option", sorted(ACCEPTED_TASK))
def test_an_accepted_task_option_changes_nothing_and_other_values_are_refused(option):
    ok, bad = ACCEPTED_TASK[option]
    assert task(**{option: ok})(plain) == task()(plain)
    with pytest.raises(InvalidTask, match=rf"^{PLAIN_PATH}: {option}={re.escape(repr(bad))} "
                                          r"is not available: "):
        task(**{option: bad})(plain)


ACCEPTED_CALL = {"serializer": ("json", "msgpack"), "retry": (True, "no"),
                 "retry_policy": ({"max_retries": 3}, 3), "add_to_parent": (False, None),
                 "delivery_mode": (2, 1)}


def test_every_accepted_call_option_is_sampled():
    assert set(ACCEPTED_CALL) == {k for k, a in CALL_OPTIONS.items() if a.status == "accepted"}


@db
@pytest.mark.parametrize("option", sorted(ACCEPTED_CALL))
def test_an_accepted_call_option_enqueues_as_without_it(option):
    ok, bad = ACCEPTED_CALL[option]
    result = tasks.add.apply_async((1, 2), **{option: ok})
    assert Job.objects.get(pk=result.id).args == [1, 2]
    with pytest.raises(TypeError, match=rf"{option}={re.escape(repr(bad))} is not available"):
        tasks.add.apply_async((1, 2), **{option: bad})


def test_queue_is_queue_name_and_both_at_once_is_refused():
    assert task(queue="emails")(plain).queue_name == "emails"
    assert task(queue="emails", queue_name="emails")(plain).queue_name == "emails"
    with pytest.raises(InvalidTask, match=r"queue='emails' \(Celery's option\) and "
                                          r"queue_name='heavy_compute' \(ours\)"):
        task(queue="emails", queue_name="heavy_compute")(plain)


def test_an_option_celery_does_not_have_either_is_pythons_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'retries'"):
        task(retries=3)(plain)
    with pytest.raises(TypeError, match=r"unknown option qeue="):
        tasks.add.apply_async((1, 2), qeue="emails")


# -- shared_task, AsyncResult, state, result -------------------------------------------------


@db
def test_shared_task_and_async_result_read_as_in_celery():
    # shared_task is Django's decorator: it makes our Task, Celery's options answered.
    made = shared_task(bind=True, queue="emails", max_retries=2)(plain)
    assert (made.queue_name, made.max_attempts, made.takes_context) == ("emails", 3, True)
    ok = tasks.add.apply_async((2, 3))
    bad = tasks.fails_with_type_error.delay()
    pending = AsyncResult(ok.id)
    assert (pending.state, pending.result, pending.ready()) == ("PENDING", None, False)
    drain()
    done, failed = AsyncResult(ok.id), AsyncResult(bad.id)
    assert (done.state, done.result, done.task_id, done.successful()) == ("SUCCESS", 5, ok.id,
                                                                          True)
    assert (failed.state, failed.failed(), failed.ready()) == ("FAILURE", True, True)
    assert failed.result.exception_class_path == "builtins.TypeError"
    assert failed.info is failed.result and "Traceback" in failed.traceback
    with pytest.raises(TaskResultDoesNotExist):
        AsyncResult("01a248c3-8cf2-79eb-ac2a-020bc7407aa0")


@db
def test_a_retry_reads_retry_and_a_revoked_job_revoked():
    flaky = tasks.retries_then_succeeds.delay()
    job = Job.objects.get(pk=flaky.id)
    job.errors = [{"exception_class_path": "builtins.ConnectionError", "message": "x",
                   "traceback": "", "attempt": 1}]
    job.save(update_fields=["errors"])
    assert AsyncResult(flaky.id).state == "RETRY"
    later = tasks.add.using(run_after=timedelta(hours=1)).enqueue(1, 1)
    assert later.revoke() == "cancelled"
    assert (later.state, later.is_cancelled, later.failed()) == ("REVOKED", True, True)


@db
def test_a_job_whose_task_was_removed_still_reads():
    result = tasks.add.delay(1, 1)
    Job.objects.filter(pk=result.id).update(task_path="tests.tasks.removed_in_a_deploy",
                                            status="FAILED")
    gone = AsyncResult(result.id)
    assert gone.task.module_path == "tests.tasks.removed_in_a_deploy"
    assert (gone.state, gone.args) == ("FAILURE", [1, 1])


@db
def test_forget_deletes_a_finished_job_only():
    ok = tasks.add.delay(2, 2)
    with pytest.raises(ValueError, match=r"is READY: only a finished job can be forgotten"):
        ok.forget()
    drain()
    ok.forget()
    assert not Job.objects.filter(pk=ok.id).exists()
    with pytest.raises(TaskResultDoesNotExist):
        ok.forget()


# -- capabilities ---------------------------------------------------------------------------


@db
def test_ignore_result_stores_no_value_except_for_a_workflows_next_step():
    from django_tasks import chain

    alone = tasks.add_quietly
    assert alone.ignore_result is True
    with pytest.raises(InvalidTask, match="ignore_result must be True or False"):
        task(ignore_result="yes")(plain)
    result = alone.delay(2, 3)
    drain()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.return_value) == ("SUCCESSFUL", None)
    # In a chain the value is kept: the next step receives it.
    last = chain(alone.s(2, 3), tasks.add.s(10)).delay()
    drain()
    last.refresh()
    assert last.return_value == 15


@db
def test_link_runs_after_success_with_the_result_and_link_error_once_on_failure():
    parent = tasks.add.apply_async((2, 3), link=tasks.add.s(10),
                                   link_error=tasks.add.si(0, 0))
    assert Job.objects.count() == 2  # the parent and its callback; the errback is not a job
    drain()
    parent.refresh()
    assert parent.return_value == 5
    callback = Job.objects.exclude(pk=parent.id).get()
    assert (callback.status, callback.return_value) == ("SUCCESSFUL", 15)

    Job.objects.all().delete()
    failing = tasks.fails_with_type_error.apply_async(
        link=[tasks.add.s(1)], link_error=tasks.getpid.si())
    drain()
    rows = {j.task_path: j for j in Job.objects.all()}
    assert str(rows["tests.tasks.fails_with_type_error"].pk) == failing.id
    assert rows["tests.tasks.add"].status == "FAILED"  # upstream failed: never ran
    assert rows["tests.tasks.getpid"].status == "SUCCESSFUL"  # the errback, once
    with pytest.raises(TypeError, match=r"link= takes a signature"):
        tasks.add.apply_async((1, 2), link="tests.tasks.add")


@pytest.mark.slow
@db
def test_revoke_terminate_kills_a_running_job_at_once():
    """Without terminate a job that never looks at is_cancelled() runs to its end (the
    worker has no --cancel-grace); with it, the prefork pool kills it as soon as the
    worker's cancel poll sees the request."""
    result = tasks.sleep_then_return.delay(60)
    worker = start_worker("-c", "1")
    assert wait_for(lambda: Job.objects.get(pk=result.id).status == RUNNING, timeout=20)
    assert result.revoke(terminate=True) == "cancelling"
    assert wait_for(lambda: Job.objects.get(pk=result.id).status == CANCELLED, timeout=15)
    worker.terminate()
    assert worker.wait(timeout=20) == 0


# -- the worker's Celery spellings --------------------------------------------------------


@pytest.mark.slow
@db
def test_worker_takes_celerys_l_and_n_and_refuses_autoscale():
    tasks.add.delay(1, 2)
    worker = start_worker("-l", "info", "-n", "celery1@%h", "--burst")
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    job = Job.objects.get()
    assert job.worker_ids == [f"celery1@{socket.gethostname()}"]
    refused = start_worker("--autoscale", "10,3")
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode != 0
    assert "argument --autoscale: Celery's autoscaling is not supported" in out


# -- expires ---------------------------------------------------------------------------------


@db
def test_a_job_not_started_before_it_expires_ends_cancelled_unrun(broker):
    from django.utils import timezone

    from django_tasks import Expired

    late = tasks.add.apply_async((1, 2), expires=timezone.now() - timedelta(seconds=1))
    on_time = tasks.add.apply_async((3, 4), expires=60)
    assert Job.objects.get(pk=on_time.id).expires_at > timezone.now()
    drain()
    job = Job.objects.get(pk=late.id)
    assert (job.status, job.attempts, job.worker_ids, job.return_value) == (
        "CANCELLED", 0, [], None)
    assert job.errors[-1]["exception_class_path"] == "django_tasks.exceptions.Expired"
    late.refresh()
    assert late.state == "REVOKED"
    with pytest.raises(Expired, match="expired before it started"):
        late.wait(timeout=1)
    assert on_time.wait(timeout=1) == 7


@db
def test_expires_on_the_task_counts_from_the_enqueue_and_bad_values_are_refused():
    quick = task(expires=timedelta(minutes=5))(plain)
    assert quick.expires_at(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 5,
                                                                          tzinfo=UTC)
    result = tasks.add.apply_async((1, 1), expires=30)
    job = Job.objects.get(pk=result.id)
    assert (job.expires_at - job.enqueued_at).total_seconds() == 30
    for bad in (0, -1, "soon", float("inf"), datetime(2030, 1, 1)):
        with pytest.raises(InvalidTask, match="expires must be a number of seconds > 0"):
            task(expires=bad)(plain)
    with pytest.raises(InvalidTask, match="expires must be"):
        tasks.add.apply_async((1, 1), expires="soon")
