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

    for worker_id, age in (("w-alive", 0), ("w-dead", 60), ("w-stopped", 0)):
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
