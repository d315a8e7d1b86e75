"""Workflows: chain, group and chord, with exactly-once callbacks (every broker)."""

import os
import signal

import pytest
from django.db import transaction
from django.tasks import task_backends

from django_tasks import GroupResult, TaskFailed, chain, chord, group
from django_tasks.exceptions import InvalidArguments, UpstreamFailed
from django_tasks.models import Job, Worker
from tests import reliability_tasks as rt
from tests import tasks
from tests.helpers import start_worker, wait_for
from tests.test_backend import drain
from tests.test_crashes import runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.rabbitmq_too]


def run(broker):
    """Drain with an inline worker. With the Redis and RabbitMQ brokers, ids are
    published after commit (these tests run outside a transaction, so at once)."""
    drain()


def test_celery_tutorial_chain(broker):
    result = chain(tasks.add.s(2, 2), tasks.mul.s(4)).delay()
    run(broker)
    assert result.get(timeout=10) == 16
    jobs = Job.objects.order_by("enqueued_at")
    assert len({j.workflow_id for j in jobs}) == 1 and jobs[0].workflow_id is not None
    assert [j.args for j in jobs] == [[2, 2], [4, 4]]  # the result was prepended


def test_pipe_builds_chains_and_immutable_steps_ignore_the_result(broker):
    result = (tasks.add.s(1, 1) | tasks.add.si(10, 10) | tasks.mul.s(3)).delay()
    run(broker)
    assert result.get(timeout=10) == 60


def test_celery_tutorial_group(broker):
    result = group(tasks.add.s(i, i) for i in range(10)).delay()
    assert isinstance(result, GroupResult) and len(result) == 10
    run(broker)
    assert result.get(timeout=10) == [i + i for i in range(10)]
    assert result.completed_count() == 10 and result.successful() and not result.failed()
    assert result.ready()


def test_chord_runs_its_body_once_with_every_result_in_member_order(broker):
    result = chord(group(tasks.add.s(i, i) for i in range(10)), tasks.tsum.s()).delay()
    body = Job.objects.get(pk=result.id)
    assert body.status == "WAITING" and body.waiting_on == 10
    assert result.status == "READY"  # Django's API sees a waiting job as ready
    run(broker)
    assert result.get(timeout=10) == 90
    body.refresh_from_db()
    assert body.args == [[i + i for i in range(10)]] and body.attempts == 1


def test_group_piped_into_a_task_is_a_chord(broker):
    result = (group(tasks.add.s(1, 1), tasks.add.s(2, 2)) | tasks.tsum.s()).delay()
    run(broker)
    assert result.get(timeout=10) == 6


def test_a_failed_step_fails_the_rest_of_the_chain_and_get_raises(broker):
    result = chain(tasks.add.s(1, 1), tasks.fails_twice_then_gives_up.s(),
                   tasks.mul.s(2), tasks.add.s(3)).delay()
    run(broker)
    with pytest.raises(UpstreamFailed, match=r"did not run: job .* failed"):
        result.get(timeout=10)
    statuses = list(Job.objects.order_by("enqueued_at").values_list("status", "attempts"))
    assert statuses == [("SUCCESSFUL", 1), ("FAILED", 2), ("FAILED", 0), ("FAILED", 0)]
    last = Job.objects.get(pk=result.id)
    assert last.errors[-1]["exception_class_path"] == "django_tasks.exceptions.UpstreamFailed"


def test_a_failed_member_skips_the_body_and_calls_the_error_callback_once(broker):
    result = chord(
        [tasks.add.s(1, 1), tasks.fails_twice_then_gives_up.s(),
         tasks.fails_twice_then_gives_up.s(), tasks.add.s(2, 2)],
        tasks.tsum.s(), on_error=tasks.errback.s(note="chord: "),
    ).delay()
    run(broker)
    with pytest.raises(TaskFailed):
        result.get(timeout=10)
    assert Job.objects.get(pk=result.id).attempts == 0  # the body never ran
    handled = Job.objects.filter(task_path="tests.tasks.errback")
    assert handled.count() == 1
    failed_ids = set(map(str, Job.objects.filter(
        task_path="tests.tasks.fails_twice_then_gives_up").values_list("id", flat=True)))
    (value,) = handled.values_list("return_value", flat=True)
    assert value.startswith("chord: handled ") and value.rsplit(" ", 1)[1] in failed_ids


def test_empty_and_one_member_groups(broker):
    empty = group().delay()
    assert empty.get(timeout=1) == [] and empty.completed_count() == 0
    result = chord(group(), tasks.tsum.s()).delay()
    one = chord(group(tasks.add.s(3, 3)), tasks.tsum.s()).delay()
    run(broker)
    assert result.get(timeout=10) == 0
    assert one.get(timeout=10) == 6


def test_groups_nest_in_chains_and_chains_in_groups(broker):
    result = chain(
        tasks.add.s(1, 1),                                     # 2
        group(tasks.mul.s(10), tasks.add.s(5) | tasks.mul.s(2)),  # [20, 14]
        tasks.tsum.s(),                                        # 34
    ).delay()
    nested = group(chain(tasks.add.s(1, 2), tasks.mul.s(3)),
                   group(tasks.add.s(1, 1), tasks.add.s(2, 2))).delay()
    run(broker)
    assert result.get(timeout=10) == 34
    assert nested.get(timeout=10) == [9, [2, 4]]


def test_retried_members_count_once(broker):
    result = chord([tasks.retries_then_succeeds.s(), tasks.add.s(1, 1)],
                   tasks.identity.s()).delay()
    run(broker)
    assert result.get(timeout=10) == [3, 2]


def test_a_workflow_enqueued_in_a_rolled_back_transaction_leaves_nothing(broker):
    with pytest.raises(RuntimeError), transaction.atomic():
        chain(tasks.add.s(1, 1), tasks.mul.s(2)).delay()
        raise RuntimeError("rollback")
    assert not Job.objects.exists()


def test_set_options_and_countdown():
    result = chain(tasks.add.s(1, 1), tasks.mul.s(2).set(queue="emails", priority=5,
                                                         countdown=60)).delay()
    drain()
    step = Job.objects.get(pk=result.id)
    assert (step.status, step.queue_name, step.priority) == ("READY", "emails", 5)
    assert (step.available_at - step.enqueued_at).total_seconds() > 50  # due a minute after


def test_bad_steps_are_refused_before_anything_is_stored():
    with pytest.raises(TypeError, match="not a workflow step"):
        chain(tasks.add.s(1, 1), lambda x: x)
    with pytest.raises(ValueError, match="needs at least one step"):
        chain()

    with pytest.raises(InvalidArguments):  # add takes two: the result and one more
        chain(tasks.add.s(1, 1), tasks.add.s(1, 2)).delay()
    assert not Job.objects.exists()


# -- real workers: concurrent finishes and kill -9 ------------------------------------------


@pytest.mark.slow
def test_three_workers_finishing_members_at_once_run_the_body_exactly_once(tmp_path, broker):
    log = tmp_path / "runs"
    workers = [start_worker("-c", "2", "--loglevel", "WARNING") for _ in range(3)]
    assert wait_for(lambda: Worker.objects.filter(stopped_at=None).count() == 3, timeout=30)
    if broker == "rabbitmq":  # registered, and consuming: the members' 12 messages (25 ids
        # each) would fit in the prefetch of the first two consumers
        rabbit = task_backends["default"].broker
        assert wait_for(lambda: rabbit.queue_counts(["default"])["default"][1] == 3, timeout=30)
    # Short naps so that every worker gets members, and finishes land together.
    members = [rt.record_slowly.s(str(log), 0.02) for _ in range(300)]
    result = chord(members, rt.collect.s(str(log))).delay()
    try:
        assert wait_for(lambda: Job.objects.filter(pk=result.id, status="SUCCESSFUL").exists(),
                        timeout=60)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[0] for proc in workers]
    assert [p.returncode for p in workers] == [0, 0, 0], outputs
    # Every member's outcome ran the workflow hook in its own write's transaction (the
    # worker marked them linked), never through the fallback.
    assert not any("without their hooks" in out for out in outputs), outputs
    assert result.get(timeout=1) == 300
    ran = runs(log)
    assert ran[result.id] == 1 and len(ran) == 301 and set(ran.values()) == {1}
    # The members really were finished by different workers at the same time.
    finishers = {j.worker_ids[-1] for j in Job.objects.exclude(pk=result.id)}
    assert len(finishers) == 3


@pytest.mark.slow
def test_kill_9_mid_chord_runs_the_body_once_with_every_result(tmp_path, broker):
    log = tmp_path / "runs"
    slow = [rt.record_slowly.s(str(log), 3).set(priority=10) for _ in range(2)]
    quick = [rt.record.s(str(log)) for _ in range(100)]
    result = chord(slow + quick, rt.collect.s(str(log))).delay()
    victim = start_worker("-c", "4", "--worker-id", "victim", "--loglevel", "WARNING")
    slow_ids = {str(i) for i in Job.objects.filter(
        task_path__endswith="record_slowly").values_list("id", flat=True)}
    # Killed while both slow members are running (each has noted its start).
    assert wait_for(lambda: slow_ids <= set(runs(log)), timeout=30)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    assert Job.objects.get(pk=result.id).status == "WAITING"
    rescuer = start_worker("-c", "4", "--worker-id", "rescuer", "--loglevel", "WARNING")
    try:
        assert wait_for(lambda: Job.objects.filter(pk=result.id, status="SUCCESSFUL").exists(),
                        timeout=60)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        out = rescuer.communicate(timeout=30)[0]
    assert rescuer.returncode == 0, out
    assert result.get(timeout=1) == 102
    ran = runs(log)
    assert ran[result.id] == 1
    # The slow members ran twice (killed, then rescued); the body counted them once.
    rows = Job.objects.filter(pk__in=slow_ids).values_list("status", "attempts", "worker_ids",
                                                           "errors")
    assert [ran[i] for i in slow_ids] == [2, 2], (list(rows), log.read_text())
    body = Job.objects.get(pk=result.id)
    # The body got every member's final result, in member order. (A slow member whose
    # start was not yet recorded at the kill was given back, not failed: its rerun is
    # attempt 1 again, so the value is 1 or 2.)
    members = body.links["inputs"]
    values = {str(i): v for i, v in Job.objects.filter(pk__in=members)
              .values_list("id", "return_value")}
    assert body.args[0] == [values[m] for m in members]
    assert {values[i] for i in slow_ids} <= {1, 2}


def test_an_error_callback_needs_a_body_that_ends_in_one_job_and_a_call_that_fits():
    for body in (group(tasks.tsum.s(), tasks.tsum.s()),
                 chain(tasks.tsum.s(), group(tasks.identity.s(), tasks.identity.s()))):
        with pytest.raises(TypeError, match="on_error needs a chord body that is a task"):
            chord([tasks.add.s(1, 1)], body, on_error=tasks.errback.s())
    # add(x, y) would get the failed job's id and nothing else: refused now, not at the
    # failure.
    with pytest.raises(InvalidArguments, match="missing a required argument: 'y'"):
        chord([tasks.add.s(1, 1)], tasks.tsum.s(), on_error=tasks.add.s()).delay()
    assert not Job.objects.exists()


def test_a_step_that_never_ran_is_not_retried_by_hand():
    from django.tasks import default_task_backend

    result = chain(tasks.fails_twice_then_gives_up.s(1), tasks.mul.s(2)).delay()
    drain()
    failed = Job.objects.get(task_path="tests.tasks.fails_twice_then_gives_up")
    assert default_task_backend.retry([result.id, failed.pk]) == [str(failed.pk)]
    assert Job.objects.get(pk=result.id).status == "FAILED"


def test_a_failing_outcome_hook_still_fails_what_waits(settings):
    from django_tasks.jobs.store import _OUTCOME_HOOKS, register_outcome_hook

    def broken(store, applied):
        if any(a.task_path == "tests.tasks.add" and a.status == "SUCCESSFUL" for a in applied):
            raise RuntimeError("a bug in someone's hook")

    register_outcome_hook(broken)
    try:
        result = chain(tasks.add.s(1, 1), tasks.mul.s(2)).delay()
        drain()
    finally:
        _OUTCOME_HOOKS.remove(broken)
    first = Job.objects.exclude(pk=result.id).get()
    assert first.status == "FAILED"
    assert first.errors[-1]["exception_class_path"].endswith("OutcomeHookFailed")
    with pytest.raises(UpstreamFailed):  # not left WAITING forever
        result.get(timeout=5)


def test_every_step_sends_task_enqueued_once_committed():
    from django.tasks.signals import task_enqueued

    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        chain(tasks.add.s(1, 1), group(tasks.mul.s(2), tasks.mul.s(3)), tasks.tsum.s()).delay()
    finally:
        task_enqueued.disconnect(receiver)
    assert sorted(seen) == sorted(str(i) for i in Job.objects.values_list("id", flat=True))
    assert len(seen) == 4


def test_countdown_after_an_empty_group_is_kept():
    result = chain(group(), tasks.tsum.s().set(countdown=60)).delay()
    step = Job.objects.get(pk=result.id)
    assert step.status == "READY" and step.args == [[]]
    assert (step.available_at - step.enqueued_at).total_seconds() > 50
