"""The admin for operators: the job list's columns and worker filter, the job page's
outcome, timeline and buttons, the workers page, and the actions (retry, cancel, retry
all failed matching a filter, purge a queue): permission-checked on the server, each
recorded in the admin log."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.tasks import default_task_backend
from django.urls import reverse
from django.utils import timezone

from django_tasks import chain
from django_tasks.models import Job, Worker
from tests import tasks
from tests.test_backend import drain

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = reverse("admin:django_tasks_job_changelist")


def user(client, *perms, superuser=False):
    if superuser:
        account = User.objects.create_superuser("root", "root@example.com", "pw")
    else:
        account = User.objects.create_user("op", password="pw", is_staff=True)
        account.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client.force_login(account)
    return account


def failed(n=1, **using):
    results = [tasks.fails_with_type_error.using(**using).enqueue() for _ in range(n)]
    drain()
    return [Job.objects.get(pk=r.id) for r in results]


def row_of(page, job):
    return next(r for r in page.text.split("<tr") if str(job.pk) in r)


def test_the_list_reads_for_operators(client):
    [bad] = failed()
    later = tasks.add.using(run_after=timedelta(hours=1)).enqueue(1, 2)
    now = tasks.add.enqueue(3, 4)
    user(client, "view_job")
    page = client.get(JOBS)
    row = row_of(page, bad)
    # A short id (the whole one on hover), the error's one line, the worker's link.
    assert f'<span title="{bad.pk}">{str(bad.pk)[-8:]}</span>' in row
    assert "TypeError: " in row and "field-error_display" in row
    assert reverse("admin:django_tasks_worker_change", args=[bad.worker_id]) in row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row)  # times to the second
    assert "took " in row
    # Scheduled is not ready.
    assert "Scheduled" in row_of(page, Job.objects.get(pk=later.id))
    assert "scheduled in 59m" in row_of(page, Job.objects.get(pk=later.id))
    ready = row_of(page, Job.objects.get(pk=now.id))
    assert "Ready" in ready and "waiting for " in ready and "Scheduled" not in ready


def test_the_worker_filter(client):
    [bad] = failed()
    other = tasks.add.enqueue(1, 1)
    default_task_backend.store.register_worker(
        id=bad.worker_id, hostname="h", pid=1, backend="default", queues=["default"],
        concurrency=1, pool="inline")
    user(client, "view_job")
    page = client.get(JOBS, {"worker_id": bad.worker_id})
    assert str(bad.pk) in page.text and str(other.id) not in page.text
    assert f"?worker_id={bad.worker_id}" in client.get(JOBS).text


def test_a_failed_jobs_page_opens_on_its_outcome_with_the_timeline(client):
    [bad] = failed()
    user(client, "view_job")
    page = client.get(reverse("admin:django_tasks_job_change", args=[bad.pk])).text
    assert page.index("Outcome") < page.index("field-task_path")
    assert "django-tasks-timeline" in page and "attempt 1 failed" in page
    assert "Traceback" in page
    assert reverse("admin:django_tasks_worker_change", args=[bad.worker_id]) in page
    # No button without the permission to use it.
    assert 'name="retry"' not in page and 'name="cancel"' not in page


def test_the_retry_button_posts_and_is_recorded(client):
    [bad] = failed()
    account = user(client, "view_job", "retry_job")
    url = reverse("admin:django_tasks_job_change", args=[bad.pk])
    page = client.get(url).text
    assert 'name="retry"' in page and 'name="cancel"' not in page
    retry_url = reverse("admin:django_tasks_job_retry", args=[bad.pk])
    assert client.get(retry_url).status_code == 403  # a GET never acts
    assert client.post(retry_url).status_code == 302
    bad.refresh_from_db()
    assert bad.status == "READY"
    assert bad.retried["by"] == "admin user op"
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id) == (account, str(bad.pk))
    assert "Retried 1 of 1" in entry.change_message
    assert "retried by an operator (admin user op)" in client.get(url).text


def test_the_cancel_button_and_a_forged_post_without_permission(client):
    job = tasks.add.enqueue(1, 1)
    user(client, "view_job", "retry_job")
    url = reverse("admin:django_tasks_job_cancel", args=[job.id])
    assert client.post(url).status_code == 403
    assert Job.objects.get(pk=job.id).status == "READY"
    assert not LogEntry.objects.exists()
    client.logout()
    user(client, superuser=True)
    page = client.get(reverse("admin:django_tasks_job_change", args=[job.id])).text
    assert 'name="cancel"' in page and 'name="retry"' not in page  # not failed
    client.post(url)
    assert Job.objects.get(pk=job.id).status == "CANCELLED"
    assert "Cancelled 1 of 1" in LogEntry.objects.get().change_message


def test_view_only_users_see_no_action_and_forged_posts_change_nothing(client):
    [bad] = failed()
    user(client, "view_job")
    page = client.get(JOBS).text
    assert "retry_jobs" not in page and "cancel_jobs" not in page
    assert "retry-failed" not in page and "purge" not in page
    client.post(JOBS, {"action": "retry_jobs", "_selected_action": [str(bad.pk)]})
    client.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(bad.pk)]})
    for url in (reverse("admin:django_tasks_job_retry", args=[bad.pk]),
                reverse("admin:django_tasks_job_retry_failed"),
                reverse("admin:django_tasks_job_purge") + "?queue_name=default"):
        assert client.post(url, {"post": "yes"}).status_code == 403, url
    bad.refresh_from_db()
    assert bad.status == "FAILED" and Job.objects.count() == 1
    assert not LogEntry.objects.exists()


def test_the_retry_action_names_the_real_reason_a_job_was_skipped(client):
    result = chain(tasks.fails_twice_then_gives_up.s(), tasks.add.s(1)).delay()
    drain()
    step = Job.objects.get(pk=result.id)  # never ran: the step before failed
    first = Job.objects.exclude(pk=step.pk).get()
    ok = tasks.add.enqueue(1, 1)
    drain()
    user(client, "view_job", "retry_job")
    response = client.post(JOBS, {"action": "retry_jobs", "_selected_action": [
        str(step.pk), str(first.pk), str(ok.id)]}, follow=True)
    text = response.text
    assert "1 job queued again." in text
    assert "1 a workflow step that never ran because a step before it failed" in text
    assert "1 not FAILED" in text
    assert "key" not in text.split("Skipped:", 1)[1].split("</li>", 1)[0]
    assert Job.objects.get(pk=first.pk).status == "READY"
    entry = LogEntry.objects.get()
    assert "Retried 1 of 3 selected" in entry.change_message and entry.object_id is None


def test_retry_all_failed_matching_the_filter_confirms_then_retries_in_batches(client,
                                                                               monkeypatch):
    from django_tasks.jobs import actions

    monkeypatch.setattr(actions, "BATCH", 2)
    emails = failed(5, queue_name="emails")
    others = failed(2)
    user(client, "view_job", "retry_job")
    listing = client.get(JOBS, {"queue_name": "emails"}).text
    assert "retry-failed/?queue_name=emails" in listing
    url = reverse("admin:django_tasks_job_retry_failed") + "?queue_name=emails"
    confirm = client.get(url)
    assert "5 failed job(s) match." in confirm.text and "queue_name = emails" in confirm.text
    assert all(j.status == "FAILED" for j in Job.objects.all())  # the GET changed nothing
    calls = []
    real = actions.retry
    monkeypatch.setattr(actions, "retry", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    client.post(url, {"post": "yes"})
    assert [len(c) for c in calls] == [2, 2, 1]
    assert {j.status for j in Job.objects.filter(pk__in=[j.pk for j in emails])} == {"READY"}
    assert {j.status for j in Job.objects.filter(pk__in=[j.pk for j in others])} == {"FAILED"}
    entry = LogEntry.objects.get()
    assert "matching queue_name=emails: 5 retried" in entry.change_message
    assert entry.object_repr == "5 jobs"


def test_purge_a_queue_keeps_held_waiting_and_workflow_jobs(client):
    doomed = [tasks.add.using(queue_name="emails").enqueue(i, i) for i in range(3)]
    ran = tasks.add.using(queue_name="emails").enqueue(9, 9)
    Job.objects.filter(pk=ran.id).update(status="SUCCESSFUL", finished_at=timezone.now())
    held = tasks.add.using(queue_name="emails").enqueue(7, 7)
    Job.objects.filter(pk=held.id).update(status="RUNNING", lease="L", worker_id="w")
    chain(tasks.add.s(1, 1), tasks.add.s(2)).delay()
    Job.objects.filter(workflow_id__isnull=False).update(queue_name="emails")
    elsewhere = tasks.add.enqueue(5, 5)
    account = user(client, "view_job", "delete_job")
    assert "purge/?queue_name=emails" in client.get(JOBS, {"queue_name": "emails"}).text
    url = reverse("admin:django_tasks_job_purge") + "?queue_name=emails"
    confirm = client.get(url).text
    assert "4 job(s) would be deleted." in confirm and "Kept:" in confirm
    client.post(url, {"post": "yes"})
    left = {str(pk) for pk in Job.objects.values_list("pk", flat=True)}
    assert not left & ({d.id for d in doomed} | {ran.id})
    assert {held.id, elsewhere.id} <= left
    assert Job.objects.filter(workflow_id__isnull=False).count() == 2  # the chain stays
    entry = LogEntry.objects.get()
    assert entry.action_flag == DELETION and entry.user == account
    assert entry.change_message == ("Purged queue emails: deleted 3 ready and 1 finished "
                                    "job(s)") and entry.object_repr == "4 jobs"


def test_the_workers_page_shows_queues_running_jobs_and_links(client):
    store = default_task_backend.store
    store.register_worker(id="w-1", hostname="h", pid=1, backend="default",
                          queues=["default", "emails"], concurrency=2, pool="prefork")
    job = tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=job.id).update(status="RUNNING", lease="L", worker_id="w-1",
                                         last_attempted_at=timezone.now())
    user(client, "view_worker", "view_job")
    page = client.get(reverse("admin:django_tasks_worker_changelist"))
    row = next(r for r in page.text.split("<tr") if ">w-1<" in r)
    assert "default, emails" in row and "[" not in row.split("field-queues_display")[1][:40]
    assert '<td class="field-holds">1</td>' in row
    assert "?worker_id=w-1" in row
    assert '<td class="field-outages_display">0</td>' in row
    Worker.objects.filter(pk="w-1").update(outages=3, in_outage=True)  # its heartbeat's
    page = client.get(reverse("admin:django_tasks_worker_changelist"))
    row = next(r for r in page.text.split("<tr") if ">w-1<" in r)
    assert "3 <strong" in row.split("field-outages_display")[1] and "in one now" in row
    Worker.objects.filter(pk="w-1").update(stopped_at=timezone.now())  # then it stopped
    page = client.get(reverse("admin:django_tasks_worker_changelist"))
    row = next(r for r in page.text.split("<tr") if ">w-1<" in r)
    assert '<td class="field-outages_display">3</td>' in row
    Worker.objects.filter(pk="w-1").update(stopped_at=None)
    detail = client.get(reverse("admin:django_tasks_worker_change", args=["w-1"])).text
    assert str(job.id)[-8:] in detail and "running for" in detail and "in one now" in detail
    assert Worker.objects.count() == 1


def test_select_all_acts_in_batches(client, monkeypatch):
    from django_tasks.jobs import actions

    monkeypatch.setattr(actions, "BATCH", 2)
    jobs = failed(5)
    user(client, "view_job", "retry_job", "cancel_job")
    batches = []
    real = actions.retry
    monkeypatch.setattr(actions, "retry", lambda *a, **k: batches.append(a[1]) or real(*a, **k))
    client.post(JOBS, {"action": "retry_jobs", "select_across": "1",
                       "_selected_action": [str(jobs[0].pk)]})
    assert [len(b) for b in batches] == [2, 2, 1]
    assert set(Job.objects.values_list("status", flat=True)) == {"READY"}
    client.post(JOBS, {"action": "cancel_jobs", "select_across": "1",
                       "_selected_action": [str(jobs[0].pk)]})
    assert set(Job.objects.values_list("status", flat=True)) == {"CANCELLED"}
    retried, cancelled = LogEntry.objects.order_by("action_time")
    assert "Retried 5 of 5 selected" in retried.change_message
    assert cancelled.change_message == ("Cancelled 5 of 5 selected job(s) (5 at once, 0 by "
                                        "their workers)")
    assert cancelled.object_repr == "5 jobs"


@pytest.mark.slow
def test_a_job_retried_from_its_page_runs_again_on_a_real_worker(client, tmp_path, broker):
    """The retry button goes through the backend, as an enqueue does: the running worker
    (woken by NOTIFY, or the id published to Redis) runs the job again."""
    import signal

    from tests import reliability_tasks as rt
    from tests.helpers import start_worker, wait_for
    from tests.test_crashes import runs

    log = tmp_path / "runs"
    result = rt.fails_first_run.enqueue(str(log))
    proc = start_worker("-c", "1", "--pool", "threads")
    try:
        assert wait_for(lambda: Job.objects.get(pk=result.id).status == "FAILED", timeout=30)
        user(client, superuser=True)
        page = client.get(reverse("admin:django_tasks_job_change", args=[result.id])).text
        assert "ValueError: the first run fails" in page and 'name="retry"' in page
        client.post(reverse("admin:django_tasks_job_retry", args=[result.id]))
        assert wait_for(lambda: Job.objects.get(pk=result.id).status == "SUCCESSFUL",
                        timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    job = Job.objects.get(pk=result.id)
    assert (job.attempts, job.return_value, job.retried["by"]) == (2, "second run",
                                                                   "admin user root")
    assert runs(log)[result.id] == 2
    assert LogEntry.objects.get().object_id == result.id
