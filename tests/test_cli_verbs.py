"""``manage.py tasks`` list, show, retry, cancel, purge: what they print (in 80 columns)
and what they change, through the code the admin's actions run."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_tasks import chain
from django_tasks.models import Job
from tests import tasks
from tests.test_backend import drain

pytestmark = pytest.mark.django_db(transaction=True)


def tasks_cmd(*args):
    out = StringIO()
    call_command("tasks", *args, stdout=out)
    return out.getvalue()


def failed(**using):
    result = tasks.fails_with_type_error.using(**using).enqueue()
    drain()
    return Job.objects.get(pk=result.id)


def test_list_newest_first_with_filters_in_80_columns():
    bad = failed()
    later = tasks.add.using(run_after=timedelta(hours=1)).enqueue(1, 2)
    mail = tasks.send_email.enqueue("a@example.com")
    text = tasks_cmd("list")
    lines = text.splitlines()
    assert lines[0].split() == ["id", "state", "queue", "task", "age", "detail"]
    assert [line[:8] for line in lines[1:4]] == [mail.id[-8:], later.id[-8:],
                                                 str(bad.pk)[-8:]]
    assert "SCHEDULED" in lines[2] and "scheduled in 59m" in lines[2]
    assert lines[4].startswith("    TypeError: ")  # the failed job's error, below it
    assert max(map(len, lines)) <= 80
    assert str(bad.pk)[-8:] in tasks_cmd("list", "--status", "failed")
    assert later.id[-8:] not in tasks_cmd("list", "--status", "failed")
    assert later.id[-8:] in tasks_cmd("list", "--status", "SCHEDULED")
    only_mail = tasks_cmd("list", "--queue", "emails")
    assert mail.id[-8:] in only_mail and later.id[-8:] not in only_mail
    by_task = tasks_cmd("list", "--task", "SEND_")
    assert mail.id[-8:] in by_task and later.id[-8:] not in by_task
    by_worker = tasks_cmd("list", "--worker", bad.worker_id)
    assert str(bad.pk)[-8:] in by_worker and mail.id[-8:] not in by_worker
    Job.objects.filter(pk=bad.pk).update(enqueued_at=timezone.now() - timedelta(hours=2))
    assert str(bad.pk)[-8:] not in tasks_cmd("list", "--since", "1h")
    limited = tasks_cmd("list", "--limit", "1")
    assert "newest 1 shown" in limited and len(limited.splitlines()) == 3
    assert "(no jobs match)" in tasks_cmd("list", "--queue", "nowhere")
    with pytest.raises(CommandError, match="--since 'soon'"):
        tasks_cmd("list", "--since", "soon")


def test_show_by_unique_prefix_with_the_outcome_first_and_tracebacks():
    bad = failed()
    text = tasks_cmd("show", str(bad.pk)[:-4])
    assert tasks_cmd("show", str(bad.pk)[-8:]) == text  # the short id the lists show
    assert text.splitlines()[0] == f"job {bad.pk}"
    assert text.index("error     TypeError: not retryable") < text.index("queue     default")
    assert "attempt 1 failed: builtins.TypeError" in text
    assert "      Traceback (most recent call last):" in text
    ok = tasks.add.enqueue(2, 3)
    drain()
    assert "returned  5" in tasks_cmd("show", ok.id.upper())
    with pytest.raises(CommandError, match="No job 0000 in this backend"):
        tasks_cmd("show", "0000")
    with pytest.raises(CommandError, match="not a job id"):
        tasks_cmd("show", "nonsense")
    with pytest.raises(CommandError, match="is the start of several job ids"):
        tasks_cmd("show", "0")  # every uuid7 of this century starts with 0


def test_retry_ids_and_failed_with_queue_record_who():
    one, two = failed(), failed(queue_name="emails")
    three = failed(queue_name="emails")
    step = chain(tasks.fails_twice_then_gives_up.s(), tasks.add.s(1)).delay()
    drain()
    text = tasks_cmd("retry", str(one.pk)[-8:], step.id)
    assert "Retried 1 job(s)." in text
    assert "Skipped: 1 a workflow step that never ran" in text
    one.refresh_from_db()
    assert one.status == "READY" and one.retried["by"] == "manage.py tasks retry"
    assert "Retried 2 job(s)." in tasks_cmd("retry", "--failed", "--queue", "emails")
    assert set(Job.objects.filter(pk__in=[two.pk, three.pk]).values_list("status", flat=True)) \
        == {"READY"}
    with pytest.raises(CommandError, match="IDs\\) or pass --failed, not both"):
        tasks_cmd("retry")
    with pytest.raises(CommandError, match="--queue goes with --failed"):
        tasks_cmd("retry", str(one.pk), "--queue", "emails")


def test_cancel_takes_prefixes_and_names_unknown_ids():
    job = tasks.add.enqueue(1, 1)
    text = tasks_cmd("cancel", job.id[:-3])
    assert f"{job.id}: cancelled (it had not started" in text
    assert Job.objects.get(pk=job.id).cancellation["message"] == \
        "cancelled by manage.py tasks cancel"
    with pytest.raises(CommandError, match="No job ffff"):
        tasks_cmd("cancel", "ffff")


def test_purge_asks_unless_yes_and_keeps_held_and_workflow_jobs(monkeypatch):
    for i in range(3):
        tasks.add.using(queue_name="emails").enqueue(i, i)
    held = tasks.add.using(queue_name="emails").enqueue(7, 7)
    Job.objects.filter(pk=held.id).update(status="RUNNING", lease="L", worker_id="w")
    chain(tasks.add.s(1, 1), tasks.add.s(2)).delay()
    Job.objects.filter(workflow_id__isnull=False).update(queue_name="emails")
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(CommandError, match="Nothing deleted \\(pass --yes"):
        tasks_cmd("purge", "emails")
    assert Job.objects.count() == 6
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    text = tasks_cmd("purge", "emails")
    assert "Queue emails: 3 job(s) to delete" in text
    assert "deleted 3 ready and 0 finished job(s)" in text
    assert Job.objects.count() == 3
    assert "deleted 0 ready" in tasks_cmd("purge", "emails", "--yes")


@pytest.mark.redis
def test_purged_ids_left_in_redis_are_dropped_by_the_worker(redis_default):
    """The Redis broker keeps the ids of jobs it published: a purge leaves them there,
    and a worker that pops one finds no READY row and drops it."""
    from django.tasks import default_task_backend

    def redis_holds():
        return "\n".join(default_task_backend.broker.status())

    purged = [tasks.add.enqueue(i, i) for i in range(3)]
    assert "deleted 3 ready" in tasks_cmd("purge", "default", "--yes")
    kept = tasks.add.enqueue(2, 3)
    assert "queue default: 4 id(s) ready" in redis_holds()  # the purged ones' ids stay
    drain()
    assert Job.objects.get(pk=kept.id).status == "SUCCESSFUL"
    assert not Job.objects.filter(pk__in=[p.id for p in purged]).exists()
    assert "no ids ready" in redis_holds()


def test_status_without_a_backend_shows_every_backend_in_turn(settings):
    """The demo's jobs go through an alias of their own: `tasks status` alone shows them."""
    tasks.add.enqueue(1, 2)
    Job.objects.create(task_path="tests.tasks.add", backend="redis", queue_name="emails",
                       enqueued_at=timezone.now(), available_at=timezone.now())
    text = tasks_cmd("status")
    sections = [line for line in text.splitlines() if line.startswith("== backend ")]
    assert sections == [f"== backend {alias} ==" for alias in settings.TASKS]
    default = text.split("== backend redis ==")[0]
    redis = text.split("== backend redis ==")[1].split("== backend")[0]
    assert "\ndefault " in default and "\nemails " not in default
    assert "\nemails " in redis and "\ndefault " not in redis
    only = tasks_cmd("status", "--backend", "default")
    assert "== backend" not in only and only.startswith("queue")
