"""The admin shows jobs read-only and retries failed ones only with permission."""

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from django_tasks.models import Job
from tests import tasks
from tests.test_backend import drain

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def failed_job():
    result = tasks.fails_with_type_error.enqueue()
    drain()
    return Job.objects.get(pk=result.id)


def staff(client, *perms):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client.force_login(user)
    return user


def test_changelist_and_readonly_change_page(client, failed_job):
    staff(client, "view_job")
    page = client.get(reverse("admin:django_tasks_job_changelist"))
    assert page.status_code == 200
    assert "tests.tasks.fails_with_type_error" in page.text
    detail = client.get(reverse("admin:django_tasks_job_change", args=[failed_job.pk]))
    assert detail.status_code == 200
    assert "not retryable" in detail.text and "Traceback" in detail.text
    assert 'name="_save"' not in detail.text  # read-only
    search = client.get(reverse("admin:django_tasks_job_changelist"), {"q": str(failed_job.pk)})
    assert str(failed_job.pk) in search.text


def test_retry_action_requires_permission(client, failed_job):
    url = reverse("admin:django_tasks_job_changelist")
    data = {"action": "retry_jobs", "_selected_action": [str(failed_job.pk)]}
    staff(client, "view_job")
    assert "retry_jobs" not in client.get(url).text
    client.post(url, data)
    failed_job.refresh_from_db()
    assert failed_job.status == "FAILED"

    user = User.objects.get(username="staff")
    user.user_permissions.add(Permission.objects.get(codename="retry_job"))
    client.force_login(user)
    client.post(url, data)
    failed_job.refresh_from_db()
    assert failed_job.status == "READY"


def test_worker_changelist_shows_alive_dead_and_stopped(client):
    from datetime import timedelta

    from django.tasks import default_task_backend
    from django.utils import timezone

    now = timezone.now()
    from django_tasks.models import Worker

    # w-alive's heartbeat is an hour ahead: alive however long a loaded machine takes to
    # render the page (WORKER_TIMEOUT is 2 s in the tests).
    for worker_id, age in (("w-alive", -3600), ("w-dead", 60), ("w-stopped", 0)):
        default_task_backend.store.register_worker(
            id=worker_id, hostname="h", pid=1, backend="default", queues=["default"],
            concurrency=2, pool="prefork",
        )
        Worker.objects.filter(pk=worker_id).update(last_heartbeat_at=now - timedelta(seconds=age))
    default_task_backend.store.unregister_worker("w-stopped", reason="shutdown")
    staff(client, "view_worker")
    page = client.get(reverse("admin:django_tasks_worker_changelist"))
    assert page.status_code == 200
    rows = {w: next(r for r in page.text.split("<tr") if f">{w}<" in r)
            for w in ("w-alive", "w-dead", "w-stopped")}
    assert '<td class="field-state">alive</td>' in rows["w-alive"]
    assert '<td class="field-state">dead</td>' in rows["w-dead"]
    assert '<td class="field-state">stopped</td>' in rows["w-stopped"]
    assert '<td class="field-stop_reason">shutdown</td>' in rows["w-stopped"]


# -- schedules -------------------------------------------------------------------------


@pytest.fixture
def schedule():
    from datetime import UTC, datetime

    from django_tasks.beat.scheduler import Scheduler
    from django_tasks.conf import parse_schedule_entry

    entry, _ = parse_schedule_entry("nightly", {"task": "tests.tasks.add",
                                                "schedule": "0 3 * * *", "args": [1, 2]})
    Scheduler("default").sync([entry], now=datetime(2026, 6, 1, tzinfo=UTC))
    from django_tasks.models import Schedule

    return Schedule.objects.get()


def test_schedule_changelist_shows_timing_runs_and_links_to_its_jobs(client, schedule):
    from django_tasks.beat.scheduler import Scheduler

    fired = Scheduler("default").run_now(schedule)
    staff(client, "view_schedule", "view_job")
    page = client.get(reverse("admin:django_tasks_schedule_changelist"))
    assert page.status_code == 200
    assert "nightly" in page.text and "cron 0 3 * * *" in page.text
    assert f"?schedule={schedule.pk}" in page.text
    jobs = client.get(reverse("admin:django_tasks_job_changelist"), {"schedule": schedule.pk})
    assert fired.job_id in jobs.text
    job_page = client.get(reverse("admin:django_tasks_job_change", args=[fired.job_id]))
    assert "nightly" in job_page.text and "run by hand" in job_page.text
    detail = client.get(reverse("admin:django_tasks_schedule_change", args=[schedule.pk]))
    assert fired.job_id in detail.text  # recent runs link to their jobs


def test_settings_schedules_keep_their_call_but_their_timing_can_change(client, schedule):
    from django_tasks.models import Schedule

    staff(client, "view_schedule", "change_schedule")
    url = reverse("admin:django_tasks_schedule_change", args=[schedule.pk])
    page = client.get(url)
    assert 'name="cron"' in page.text and 'name="task_path"' not in page.text
    form = {"cron": "*/5 * * * *", "interval": "", "timezone": "Europe/Paris",
            "catch_up": "latest", "enabled": "on"}
    bad = client.post(url, {**form, "cron": "61 * * * *"})
    assert bad.status_code == 200 and "61" in bad.text  # the form shows the cron error
    assert client.post(url, form).status_code == 302
    changed = Schedule.objects.get()
    assert (changed.cron, changed.timezone, changed.task_path) == (
        "*/5 * * * *", "Europe/Paris", "tests.tasks.add")
    assert changed.checked_until > schedule.checked_until  # ticks count from the edit
    assert changed.next_run_at.minute % 5 == 0


def test_a_schedule_made_in_the_admin_fires(client):
    from django_tasks.beat.scheduler import Scheduler
    from django_tasks.models import Schedule

    staff(client, "view_schedule", "add_schedule")
    url = reverse("admin:django_tasks_schedule_add")
    form = {"name": "mine", "backend": "default", "task_path": "tests.tasks.add",
            "args": "[2, 2]", "kwargs": "{}", "queue_name": "", "priority": "",
            "cron": "", "interval": "1", "timezone": "", "catch_up": "skip",
            "enabled": "on"}
    neither = client.post(url, {**form, "interval": ""})
    assert neither.status_code == 200 and "Give a cron expression or an interval" in neither.text
    typo = client.post(url, {**form, "task_path": "tests.tasks.addd"})
    assert typo.status_code == 200
    assert "&#x27;tests.tasks&#x27; has no &#x27;addd&#x27;" in typo.text
    wrong_args = client.post(url, {**form, "args": "[1]"})
    assert wrong_args.status_code == 200
    assert "missing a required argument: &#x27;y&#x27;" in wrong_args.text
    assert client.post(url, form).status_code == 302
    mine = Schedule.objects.get()
    assert mine.origin == "admin" and mine.next_run_at is not None
    [fired] = Scheduler("default").run_due(mine.next_run_at)
    assert Job.objects.get(pk=fired.job_id).args == [2, 2]


def test_run_now_needs_its_permission_and_switches_need_change(client, schedule):
    from django_tasks.models import Schedule

    url = reverse("admin:django_tasks_schedule_changelist")
    run = {"action": "run_now", "_selected_action": [str(schedule.pk)]}
    user = staff(client, "view_schedule")
    assert "run_now" not in client.get(url).text
    client.post(url, run)
    client.post(url, {"action": "disable", "_selected_action": [str(schedule.pk)]})
    assert Job.objects.count() == 0 and Schedule.objects.get().enabled

    user.user_permissions.add(*Permission.objects.filter(
        codename__in=["run_schedule", "change_schedule"]))
    client.force_login(user)
    client.post(url, run)
    assert Job.objects.count() == 1
    client.post(url, {"action": "disable", "_selected_action": [str(schedule.pk)]})
    assert not Schedule.objects.get().enabled
    client.post(url, {"action": "enable", "_selected_action": [str(schedule.pk)]})
    assert Schedule.objects.get().enabled


def test_a_workflow_jobs_page_links_the_workflows_other_jobs(client):
    from django_tasks import chain

    result = chain(tasks.add.s(1, 1), tasks.add.s(2), tasks.add.s(3)).delay()
    staff(client, "view_job")
    first, second, last = Job.objects.order_by("enqueued_at", "id")
    page = client.get(reverse("admin:django_tasks_job_change", args=[second.pk]))
    assert page.status_code == 200
    for other in (first, last):
        assert reverse("admin:django_tasks_job_change", args=[other.pk]) in page.text
    assert "WAITING" in page.text and str(last.pk) == result.id
