"""Rate limits hold across every worker on every host (Celery's are per worker)."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta
from itertools import pairwise

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import DatabaseError
from django.tasks import task
from django.tasks.exceptions import InvalidTask

from django_tasks.conf import BackendOptions
from django_tasks.models import Job, RateLimit, Worker
from django_tasks.rates import parse_rate
from django_tasks.worker import TaskWorker, ledger
from tests import tasks
from tests.helpers import start_worker, wait_for

db = pytest.mark.django_db(transaction=True)


def plain():
    return None


def test_celerys_rate_syntax():
    assert parse_rate("30/s").interval == pytest.approx(1 / 30)
    assert parse_rate("100/m").interval == pytest.approx(0.6)
    assert parse_rate("1000/h").interval == pytest.approx(3.6)
    assert parse_rate(10).interval == pytest.approx(0.1)  # a number: per second
    assert parse_rate("2.5").interval == pytest.approx(0.4)
    assert parse_rate(None) is None and parse_rate("0/m") is None and parse_rate(0) is None
    for bad in ("fast", "10/d", "-1/s", "", True, [10], "inf/s"):
        with pytest.raises(ValueError, match="a rate limit is a string such as '30/s'"):
            parse_rate(bad)


def test_bad_limits_are_refused_where_they_are_written():
    with pytest.raises(InvalidTask, match=r"plain: rate_limit: a rate limit is a string"):
        task(rate_limit="often")(plain)
    assert task(rate_limit="10/m")(plain).rate_limit == "10/m"
    options = BackendOptions.parse({"RATE_LIMITS": {"emails": "100/m", "bulk": "lots"}})
    assert options.rate_limits["emails"].interval == pytest.approx(0.6)
    assert options.problems == ("OPTIONS['RATE_LIMITS']['bulk']: a rate limit is a string "
                                "such as '30/s', '100/m' or '1000/h' (or a number per "
                                "second); got 'lots'",)
    assert BackendOptions.parse({"RATE_LIMITS": ["emails"]}).problems


def most_in_any_window(times, width):
    """The largest number of ``times`` (sorted) within any half-open window of ``width``."""
    most, first = 0, 0
    for last in range(len(times)):
        while times[last] - times[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


@db
def test_a_queue_limit_spaces_the_starts_of_its_jobs(settings, client):
    from tests.test_backend import drain

    options = settings.TASKS["default"]["OPTIONS"]
    settings.TASKS = {**settings.TASKS, "default": {**settings.TASKS["default"], "OPTIONS": {
        **options, "RATE_LIMITS": {"emails": "20/s"}}}}
    for i in range(6):
        tasks.send_email.delay(f"user{i}@example.com")
    other = tasks.add.delay(1, 1)  # the default queue has no limit
    drain()
    starts = sorted(Job.objects.filter(queue_name="emails").values_list("started_at", flat=True))
    gaps = [(b - a).total_seconds() for a, b in pairwise(starts)]
    # Slots 1/20 s apart (5% more): six starts span at least five gaps, whatever the
    # lateness of any one start.
    assert len(starts) == 6 and (starts[-1] - starts[0]).total_seconds() >= 5 * 0.05, gaps
    assert Job.objects.get(pk=other.id).status == "SUCCESSFUL"
    assert RateLimit.objects.filter(key="queue:emails").exists()
    assert not RateLimit.objects.filter(key="tests.tasks.add").exists()

    # Shown where operators look: tasks status, and the admin's rate limits page.
    out = io.StringIO()
    call_command("tasks", "status", "--backend", "default", stdout=out)
    assert re.search(r"queue:emails\s+20/s\s+(now|in \d+\.\ds)", out.getvalue()), out.getvalue()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    page = client.get("/admin/django_tasks/ratelimit/")
    assert page.status_code == 200 and "queue:emails" in page.text and "20/s" in page.text


def stall(worker, seconds):
    """The main thread dispatches ``seconds`` late (stalled, or held back while the
    broker thread was slow to record earlier starts); returns the jobs it started."""
    return worker.ledger.collect_and_start(
        [], may_start=True, free_slots=lambda: 1, clock=time.monotonic() + seconds)


@db
def test_a_job_that_missed_its_slot_gets_a_new_one_instead_of_starting_late():
    results = [tasks.rate_limited.enqueue(i) for i in range(2)]
    worker = TaskWorker(pool="inline", concurrency=1, worker_id="w")
    assert worker.exchange() == 2
    limit = RateLimit.objects.get(key="tests.tasks.rate_limited")
    first_slot = worker.ledger.next_start()
    # 0.2 s late: more than 5% of the period. Started now, either job could make a
    # window of one second hold 31 starts: neither starts.
    assert stall(worker, 0.2) == []
    assert {m.id for m in worker.ledger.late()} == {r.id for r in results}
    assert worker.ledger.next_start() == float("inf")

    worker.exchange()  # the broker thread reserves two new slots
    assert worker.ledger.late() == []
    assert worker.ledger.next_start() > first_slot
    missed_until = limit.next_at  # the slots missed are not given to anyone
    limit.refresh_from_db()
    assert limit.next_at >= missed_until + 2 / 30
    worker.drain()
    for r in results:
        job = Job.objects.get(pk=r.id)
        assert job.status == "SUCCESSFUL" and job.attempts == 1
        # At or after the new slots, which follow the two it missed.
        assert job.started_at.timestamp() >= missed_until - 0.001


@db
def test_a_job_late_for_its_slot_within_the_tolerance_starts(monkeypatch):
    result = tasks.rate_limited.enqueue(1)
    worker = TaskWorker(pool="inline", concurrency=1)
    assert worker.exchange() == 1
    # 5% of one second, less the time the reservation took: 10 ms late is on time.
    started = stall(worker, 0.01)
    assert [m.id for m in started] == [result.id] and worker.ledger.late() == []


@db
def test_a_job_that_keeps_missing_its_slot_starts_late_rather_than_never(monkeypatch):
    monkeypatch.setattr(ledger, "REPACE_TRIES", 2)
    result = tasks.rate_limited.enqueue(1)
    worker = TaskWorker(pool="inline", concurrency=1)
    assert worker.exchange() == 1
    for _ in range(2):
        assert stall(worker, 0.2) == []
        worker.exchange()
    assert [m.id for m in stall(worker, 0.2)] == [result.id]


@db
def test_a_late_job_with_no_slot_within_the_horizon_goes_back_ready(settings, monkeypatch):
    options = settings.TASKS["default"]["OPTIONS"]
    settings.TASKS = {**settings.TASKS, "default": {**settings.TASKS["default"], "OPTIONS": {
        **options, "RATE_LIMITS": {"emails": "1/m"}}}}
    result = tasks.send_email.enqueue("a@example.com")
    worker = TaskWorker(pool="inline", concurrency=1)
    assert worker.exchange() == 1
    assert stall(worker, 5.0) == []  # the next slot is a minute away

    def down(messages, at):
        raise DatabaseError("the database went away")

    real = worker.store.give_back_at
    monkeypatch.setattr(worker.store, "give_back_at", down)
    with pytest.raises(DatabaseError):
        worker.exchange()
    # Kept, still late: the next round trip tries again.
    assert [m.id for m in worker.ledger.late()] == [result.id]
    assert worker.snapshot().claimed == 1
    monkeypatch.setattr(worker.store, "give_back_at", real)
    worker.exchange()
    assert worker.snapshot().buffered == () and worker.snapshot().claimed == 0
    job = Job.objects.get(pk=result.id)
    assert job.status == "READY" and job.attempts == 0
    assert 55 < (job.available_at - job.enqueued_at).total_seconds() < 65


@pytest.mark.slow
@db
def test_four_workers_never_start_more_than_the_limit_in_any_second(broker):
    workers = [start_worker("-c", "2", "--pool", "threads") for _ in range(4)]
    # Every worker ready before the jobs come: one that started seconds before the
    # others (a loaded machine) could otherwise run them all.
    assert wait_for(lambda: Worker.objects.filter(stopped_at__isnull=True).count() == 4,
                    timeout=60)
    results = [tasks.rate_limited.delay(i) for i in range(100)]
    assert wait_for(lambda: Job.objects.filter(status="SUCCESSFUL").count() == 100,
                    timeout=60), Job.objects.values_list("status", flat=True)[:5]
    for w in workers:
        w.terminate()
    for w in workers:
        assert w.wait(timeout=30) == 0
    runs = sorted(Job.objects.values_list("started_at", "worker_id"))
    starts = [at for at, _ in runs]
    most = most_in_any_window(starts, timedelta(seconds=1))
    assert most <= 30, [(at.isoformat(), worker) for at, worker in runs]
    # Not a trickle either: 100 jobs at 30/s (spaced 5% wider) take about 3.5 s.
    assert (starts[-1] - starts[0]) < timedelta(seconds=10)
    ran_by = set(Job.objects.values_list("worker_id", flat=True))
    assert len(ran_by) >= 2, "the limit must hold across workers, so several must run jobs"
    assert {r.id for r in results} == {str(i) for i in Job.objects.values_list("pk", flat=True)}
    assert RateLimit.objects.get(key="tests.tasks.rate_limited").next_at > 0
