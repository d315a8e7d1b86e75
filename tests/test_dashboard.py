"""The dashboard (#18): what it shows, who may see it, and its refresh endpoint."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from django_tasks.models import Job, Schedule, Worker
from django_tasks.observe import numbers
from tests import tasks
from tests.test_backend import drain

pytestmark = pytest.mark.django_db(transaction=True)

URL = "admin:django_tasks_dashboard_changelist"
REFRESH = "admin:django_tasks_dashboard_refresh"


def staff(client, *perms, name="staff"):
    user = User.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client.force_login(user)
    return user


@pytest.fixture
def activity():
    """Jobs of every kind: run (some failed), ready, scheduled, held by a dead worker."""
    for i in range(5):
        tasks.add.enqueue(i, i)
    tasks.fails_with_type_error.enqueue()
    drain()
    for i in range(3):
        tasks.add.enqueue(i, 1)
    tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    tasks.send_email.enqueue("x@example.com")
    # a job held by a worker that stopped heart-beating long ago
    Worker.objects.create(id="ghost", hostname="h", pid=1, concurrency=1, pool="prefork",
                          started_at=timezone.now() - timedelta(hours=1),
                          last_heartbeat_at=timezone.now() - timedelta(minutes=30))
    held = tasks.add.enqueue(7, 7)
    Job.objects.filter(pk=held.id).update(status="RUNNING", worker_id="ghost", lease="L",
                                          last_attempted_at=timezone.now())
    # a READY job due two hours ago: late
    late = tasks.add.enqueue(8, 8)
    Job.objects.filter(pk=late.id).update(available_at=timezone.now() - timedelta(hours=2))
    Schedule.objects.create(name="nightly", task_path="tests.tasks.add", cron="0 3 * * *",
                            checked_until=timezone.now(), last_error="boom: it broke")
    return {"held": held.id, "late": late.id}


def test_the_dashboard_shows_queues_charts_stuck_jobs_failures_workers_schedules(
        client, activity):
    staff(client, "view_job")
    page = client.get(reverse(URL))
    assert page.status_code == 200
    text = page.text
    # the queues: default has 3 + 1 late + ... ready now, 1 scheduled later
    [default] = [q for q in page.context["queues"] if q["row"].queue == "default"
                 and q["row"].backend == "default"]
    assert (default["row"].ready.n, default["row"].scheduled.n, default["row"].running) == (
        4, 1, 1)
    assert default["row"].failed_hour == 1 and default["row"].finished_hour == 6
    assert default["oldest"].startswith("2 h")
    [emails] = [q for q in page.context["queues"] if q["row"].queue == "emails"
                and q["row"].backend == "default"]
    assert emails["row"].ready.n == 1
    # the chart: 6 finished this minute, 1 of them failed (a red bar)
    assert page.context["chart"].total == 6 and page.context["chart"].failed == 1
    assert 'class="failed"' in text and "<svg" in text
    # percentiles per task, from the histograms
    [add] = [t for t in page.context["tasks"] if t["task_path"] == "tests.tasks.add"]
    assert add["total"] == 5 and all(v != "-" for v in add["run"] + add["wait"])
    # stuck: held by a dead worker, and ready for too long
    whys = {str(j["id"]): j["why"] for j in page.context["stuck"]}
    assert whys[activity["held"]] == "held by a dead worker"
    assert whys[activity["late"]].startswith("ready for over")
    # the failure and its error line
    assert "TypeError: not retryable" in text
    # workers and schedules
    assert "ghost" in text and "nightly" in text and "boom: it broke" in text
    # the refresh script and where it fetches from
    assert f'data-refresh="{reverse(REFRESH)}"' in text


def test_filters_by_range_queue_and_task(client, activity):
    staff(client, "view_job")
    for span in ("1h", "24h", "7d"):
        page = client.get(reverse(URL), {"range": span})
        assert page.status_code == 200 and page.context["chart"].total == 6
    page = client.get(reverse(URL), {"queue": "default:emails"})
    assert page.context["chart"].total == 0
    page = client.get(reverse(URL), {"task": "tests.tasks.fails_with_type_error"})
    assert (page.context["chart"].total, page.context["chart"].failed) == (1, 1)
    assert client.get(reverse(URL), {"range": "nonsense"}).context["span"] == "1h"


def test_the_refresh_endpoint_returns_the_body_alone(client, activity):
    staff(client, "view_job")
    body = client.get(reverse(REFRESH), {"range": "24h"})
    assert body.status_code == 200 and "no-store" in body["Cache-Control"]
    assert "<html" not in body.text and "Queues" in body.text and "<svg" in body.text
    assert body.context["span"] == "24h"


def test_the_view_permission_on_jobs_is_enough_and_needed(client, activity):
    staff(client, name="nobody")  # staff, no permission
    assert client.get(reverse(URL)).status_code == 403
    assert client.get(reverse(REFRESH)).status_code == 403
    index = client.get(reverse("admin:index"))
    assert reverse(URL) not in index.text
    client.logout()
    assert client.get(reverse(URL)).status_code == 302  # to the login page
    staff(client, "view_job", name="viewer")
    assert client.get(reverse(URL)).status_code == 200
    assert client.get(reverse(REFRESH)).status_code == 200
    # linked from the admin index and from our changelists
    assert reverse(URL) in client.get(reverse("admin:index")).text
    assert reverse(URL) in client.get(reverse("admin:django_tasks_job_changelist")).text


def test_linked_from_every_changelist_of_ours(client):
    User.objects.create_superuser("admin", password="pw")
    client.login(username="admin", password="pw")
    for model in ("job", "worker", "schedule"):
        page = client.get(reverse(f"admin:django_tasks_{model}_changelist"))
        assert reverse(URL) in page.text, model
    # nothing to add, change or delete on the dashboard itself
    assert client.get(reverse(URL)).status_code == 200
    assert "addlink" not in client.get(reverse("admin:index")).text.split(reverse(URL))[1][:200]


def test_capped_counts_say_so(monkeypatch):
    monkeypatch.setattr(numbers, "COUNT_CAP", 3)
    for i in range(5):
        tasks.add.enqueue(i, i)
    row = numbers.backlog(tasks.add.get_backend(), "default", timezone.now(),
                        timedelta(minutes=10))
    assert (row.ready.n, row.ready.more, str(row.ready)) == (3, True, "3+")


def test_an_empty_dashboard_renders(client):
    staff(client, "view_job")
    page = client.get(reverse(URL))
    assert page.status_code == 200 and "No failed jobs." in page.text
