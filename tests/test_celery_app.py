"""A Celery app (tests/celery_app.py) runs with only its imports changed, on every
broker, called the way Celery's documentation calls tasks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks import AsyncResult
from django_tasks.models import Job
from tests import celery_app
from tests.helpers import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True),
              pytest.mark.rabbitmq_too]


def test_a_celery_app_runs_unchanged(broker):
    sums = celery_app.add.delay(4, 4)
    chained = celery_app.add.apply_async((2, 2), link=celery_app.mul.s(16))
    later = celery_app.add.apply_async(args=[1, 2], countdown=0.5)
    welcome = celery_app.send_welcome.apply_async(("ada@example.com",),
                                                  kwargs={"fail_times": 2})
    pings = [celery_app.ping.delay(i) for i in range(10)]
    stale = celery_app.report.apply_async(("2026-10",),
                                          expires=timezone.now() - timedelta(seconds=1))
    fresh = celery_app.report.delay("2026-11")
    broken = celery_app.broken.apply_async(link_error=celery_app.on_error.s())
    assert Job.objects.get(pk=welcome.id).queue_name == "emails"  # queue= is queue_name

    worker = start_worker("-l", "info", "-c", "2")
    assert wait_for(lambda: not Job.objects.exclude(
        status__in=["SUCCESSFUL", "FAILED", "CANCELLED"]).exists(), timeout=60)
    worker.terminate()
    assert worker.wait(timeout=30) == 0

    assert AsyncResult(sums.id).get(timeout=1) == 8
    assert AsyncResult(later.id).get(timeout=1) == 3
    follow = Job.objects.get(task_path="tests.celery_app.mul")
    assert (chained.get(timeout=1), follow.return_value) == (4, 64)  # link: mul(4, 16)
    result = AsyncResult(welcome.id)
    assert (result.state, result.result) == ("SUCCESS", "sent to ada@example.com after 2 "
                                                        "retries")
    assert all(AsyncResult(p.id).state == "SUCCESS" for p in pings)
    assert {AsyncResult(p.id).result for p in pings} == {None}  # ignore_result
    assert AsyncResult(stale.id).state == "REVOKED"  # expired: never ran
    assert AsyncResult(fresh.id).get(timeout=1) == "report 2026-11"
    failed = AsyncResult(broken.id)
    assert (failed.state, failed.result.exception_class_path) == ("FAILURE",
                                                                  "builtins.ValueError")
    errback = Job.objects.get(task_path="tests.celery_app.on_error")
    assert errback.return_value == f"handled {broken.id}"
