"""The per-minute statistics (#18): written with the outcomes they count, by real
workers and by every other outcome path (cancel, rescue), and pruned by age."""

import socket
import urllib.request
from datetime import timedelta
from itertools import pairwise
from types import SimpleNamespace

import pytest
from django.db import DatabaseError, connection
from django.db.models import Sum
from django.tasks import default_task_backend
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks.histograms import BOUNDS, RUN_COLUMNS, WAIT_COLUMNS, percentile
from django_tasks.jobs.enqueued import COUNTER
from django_tasks.jobs.messages import ByQueues, Outcome, Start
from django_tasks.jobs.tally import Tally, tally
from django_tasks.models import Statistic, Worker
from django_tasks.worker import TaskWorker
from tests import reliability_tasks as rt
from tests import tasks
from tests.helpers import start_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def totals(task_path, outcome):
    """The sums of every counter of one task and outcome over all minutes and queues."""
    columns = ["n", "run_n", "run_us", "wait_n", "wait_us", *RUN_COLUMNS, *WAIT_COLUMNS]
    found = Statistic.objects.filter(task_path=task_path, outcome=outcome).aggregate(
        **{c: Sum(c) for c in columns})
    return {c: v or 0 for c, v in found.items()}


@pytest.mark.slow
def test_a_real_worker_counts_what_it_ran(broker, client, settings):
    """Also what /metrics serves of it (the view scraped while the worker is alive,
    docs/observability.md) and the worker's JSON log lines."""
    COUNTER.take()  # earlier tests' enqueues
    for i in range(20):
        tasks.add.enqueue(i, i)
    tasks.always_fails.enqueue()  # 3 attempts: 2 retries, then FAILED
    tasks.sleep_then_return.enqueue(0.3)
    port = free_port()
    proc = start_worker("-c", "2", "--pool", "threads", "--log-format", "json",
                        "--metrics-port", str(port))
    try:
        assert wait_for(lambda: totals("tests.tasks.always_fails", "FAILED")["n"] == 1
                        and totals("tests.tasks.add", "SUCCESSFUL")["n"] == 20
                        and totals("tests.tasks.sleep_then_return", "SUCCESSFUL")["n"] == 1,
                        timeout=60)
        # the worker's own counters ride on its heartbeat
        assert wait_for(lambda: Worker.objects.filter(processed=24, failed=1).exists())
        assert Worker.objects.get().memory > 0
        settings.TASKS_METRICS_TOKEN = "s3cret"
        scraped = scrape(client.get("/tasks/metrics", HTTP_AUTHORIZATION="Bearer s3cret"))
        # the worker's own endpoint serves the same numbers (read from the database)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            from_worker = scrape(SimpleNamespace(status_code=r.status, content=r.read()))
        counted = {k: v for k, v in scraped.items() if k[0].endswith(("_total", "_bucket"))}
        assert counted and counted == {k: from_worker[k] for k in counted}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    _check_metrics(scraped)
    _check_json_lines(out)
    add = totals("tests.tasks.add", "SUCCESSFUL")
    # every attempt observed once, in every bucket at or above its duration
    assert add["run_n"] == add["wait_n"] == 20
    assert add["run_le_1h"] == add["wait_le_1h"] == 20
    assert all(add[a] <= add[b] for a, b in pairwise(RUN_COLUMNS))
    assert totals("tests.tasks.always_fails", "READY")["n"] == 2  # the retries
    slow = totals("tests.tasks.sleep_then_return", "SUCCESSFUL")
    assert slow["run_us"] >= 300_000 and slow["run_le_250ms"] == 0 and slow["run_le_1h"] == 1
    assert set(Statistic.objects.values_list("backend", "queue_name").distinct()) == {
        ("default", "default")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(response):
    """{(sample name, sorted labels): value} of a /metrics response."""
    from prometheus_client.parser import text_string_to_metric_families

    assert response.status_code == 200, response.content
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples}


def _check_metrics(scraped):
    def value(name, task=None, **labels):
        labels = {"backend": "default", **labels}
        if task is not None:
            labels.update(queue="default", task=f"tests.tasks.{task}")
        return scraped[(name, tuple(sorted(labels.items())))]

    assert value("django_tasks_enqueued_total", "add") == 20
    assert value("django_tasks_enqueued_total", "always_fails") == 1
    assert value("django_tasks_succeeded_total", "add") == 20
    assert value("django_tasks_started_total", "add") == 20
    assert value("django_tasks_started_total", "always_fails") == 3
    assert value("django_tasks_retried_total", "always_fails") == 2
    assert value("django_tasks_failed_total", "always_fails") == 1
    # histograms: cumulative buckets, +Inf = count, as the statistics hold them
    assert value("django_tasks_run_seconds_count", "add") == 20
    assert value("django_tasks_run_seconds_bucket", "add", le="+Inf") == 20
    assert value("django_tasks_queue_wait_seconds_count", "add") == 20
    assert value("django_tasks_run_seconds_bucket", "sleep_then_return", le="0.25") == 0
    assert value("django_tasks_run_seconds_bucket", "sleep_then_return", le="1.0") == 1
    assert value("django_tasks_run_seconds_sum", "sleep_then_return") >= 0.3
    # gauges: the dashboard's reads
    assert value("django_tasks_ready_jobs", queue="default") == 0
    assert value("django_tasks_running_jobs", queue="default") == 0
    assert value("django_tasks_oldest_ready_age_seconds", queue="default") == 0
    assert value("django_tasks_workers_alive") == 1
    assert value("django_tasks_worker_slots") == 2
    assert value("django_tasks_worker_busy_slots") == 0
    assert value("django_tasks_broker_outages") == 0


def _check_json_lines(out):
    import json

    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("outcome") == "FAILED"]
    assert len(failed) == 1 and failed[0]["task"] == "tests.tasks.always_fails"
    assert failed[0]["attempt"] == 3 and failed[0]["queue"] == "default"
    assert failed[0]["worker_id"] and failed[0]["job_id"] and failed[0]["duration"] >= 0
    assert sum(line.get("outcome") == "SUCCESSFUL" for line in lines) == 21
    assert sum(line.get("outcome") == "RETRY" for line in lines) == 2


def _claimed(n):
    for i in range(n):
        tasks.add.enqueue(i, i)
    return default_task_backend.broker.claim("w", "L", ["default"], n)


def test_a_workers_round_trips_are_counted_by_the_worker_one_row_per_key(broker):
    for i in range(50):
        tasks.add.enqueue(i, i)
    worker = TaskWorker(pool="inline", concurrency=50, worker_id="w")
    with CaptureQueriesContext(connection) as queries:
        assert worker.drain() == 50
    # the round trips wrote no statistics; the worker added its tally, when idle
    assert any("django_tasks_minute" in q["sql"] for q in queries.captured_queries)
    assert not Statistic.objects.filter(outcome="READY").exists()
    [row] = Statistic.objects.all()
    assert (row.task_path, row.outcome, row.n, row.run_n, row.wait_n, row.run_le_1h) == (
        "tests.tasks.add", "SUCCESSFUL", 50, 50, 50, 50)
    assert not worker.tally


def test_an_idle_worker_adds_its_counts_once_an_interval_not_once_a_job(monkeypatch):
    """Jobs arriving one at a time leave the worker idle after each: it adds the counts
    of the first at once, then at most once every STATISTICS_INTERVAL, its sleep ending
    by then to add them (not a transaction a job)."""
    import time

    from django_tasks.worker import broker_thread

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(broker_thread, "time",
                        SimpleNamespace(monotonic=lambda: clock.now, sleep=time.sleep))
    worker = TaskWorker(pool="inline", concurrency=1, worker_id="w")
    done = lambda: totals("tests.tasks.add", "SUCCESSFUL")["n"]  # noqa: E731
    tasks.add.enqueue(1, 1)
    worker.run_once()
    worker.run_once()
    assert done() == 1 and not worker.tally  # the first: at once
    for i in range(3):
        clock.now += 0.2
        tasks.add.enqueue(i, i)
        worker.run_once()
        worker.run_once()
    assert done() == 1 and worker.tally  # within the interval: kept
    clock.now += broker_thread.STATISTICS_INTERVAL - 0.6
    worker.broker_thread._sleep()  # idle: sleeps no later than the interval's end
    assert done() == 4 and not worker.tally


def test_outcomes_written_outside_a_round_trip_count_in_their_transaction():
    store = default_task_backend.store
    messages = _claimed(3)
    now = timezone.now().isoformat()
    outcomes = [Outcome(id=m.id, lease=m.lease, status="SUCCESSFUL", finished_at=now,
                        started_at=now, ran=0.02, waited=2.0) for m in messages[:2]]
    stale = Outcome(id=messages[2].id, lease="not-its-lease", status="SUCCESSFUL",
                    finished_at=now)
    store.apply_outcomes("w", [*outcomes, stale])
    [row] = Statistic.objects.all()
    assert (row.n, row.run_n, row.run_us, row.run_le_10ms, row.run_le_25ms) == (
        2, 2, 2 * 20_000, 0, 2)
    assert (row.wait_n, row.wait_le_1s, row.wait_le_2s5) == (2, 0, 2)
    # the round trip's verb does not count (its worker does)
    more = _claimed(1)
    store.exchange("w", lease="L2", claim=ByQueues(["default"], 0), outcomes=[
        Outcome(id=more[0].id, lease=more[0].lease, status="SUCCESSFUL", finished_at=now)])
    row.refresh_from_db()
    assert row.n == 2


def test_a_tally_that_could_not_be_written_is_kept(monkeypatch):
    store = default_task_backend.store
    counts = Tally()
    counts.add(timezone.now(), [("q", "t", "SUCCESSFUL", 0.1, 0.2)])

    def broken(rows):
        raise DatabaseError("gone")

    monkeypatch.setattr(store.engine, "add_counts", broken)
    with pytest.raises(DatabaseError):
        store.add_statistics(counts)
    monkeypatch.undo()
    counts.add(timezone.now(), [("q", "t", "SUCCESSFUL", None, None)])
    assert store.add_statistics(counts) == 1
    [row] = Statistic.objects.all()
    assert (row.n, row.run_n) == (2, 1)


def test_cancelled_jobs_are_counted_without_durations():
    results = [tasks.add.enqueue(1, 1) for _ in range(3)]
    default_task_backend.cancel([r.id for r in results], by="test")
    assert (totals("tests.tasks.add", "CANCELLED")["n"],
            totals("tests.tasks.add", "CANCELLED")["run_n"]) == (3, 0)


def test_a_rescued_attempt_is_counted_with_its_run_time(tmp_path):
    store = default_task_backend.store
    store.register_worker(id="dead", hostname="h", pid=1, backend="default",
                          queues=["default"], concurrency=1, pool="prefork")
    rt.record.enqueue(str(tmp_path / "runs"))  # retried: max_attempts 3
    [message] = default_task_backend.broker.claim("dead", "L", ["default"], 1)
    started = timezone.now() - timedelta(seconds=3)
    store.record_starts("dead", [Start(message.id, message.lease, started.isoformat())])
    store.unregister_worker("dead")
    store.rescue_orphans("rescuer")
    row = totals("tests.reliability_tasks.record", "READY")
    assert (row["n"], row["run_n"], row["run_le_1s"], row["run_le_5s"]) == (1, 1, 0, 1)


def test_statistics_are_pruned_by_age_per_backend():
    now = timezone.now().replace(second=0, microsecond=0)
    for backend, age in [("default", 20), ("default", 1), ("other", 20)]:
        Statistic.objects.create(minute=now - timedelta(days=age), backend=backend,
                                 queue_name="q", task_path="t", outcome="SUCCESSFUL", n=1)
    assert default_task_backend.store.prune_statistics(now - timedelta(days=14)) == 1
    assert sorted(Statistic.objects.values_list("backend", flat=True)) == ["default", "other"]


def test_tally_and_percentiles():
    minute = timezone.now()
    rows = tally(minute, "b", [("q", "t", "SUCCESSFUL", 0.004, None),
                               ("q", "t", "SUCCESSFUL", 0.3, 1.0),
                               ("q", "t", "FAILED", None, None)])
    ok, failed = sorted(rows, key=lambda r: r["outcome"], reverse=True)
    assert (ok["n"], ok["run_n"], ok["run_le_5ms"], ok["run_le_500ms"], ok["wait_n"]) == (
        2, 2, 1, 2, 1)
    assert (failed["n"], failed["run_n"]) == (1, 0)
    bounds = [b for b, _ in BOUNDS]
    # 100 observations: 50 at or under 10 ms, all under 100 ms
    buckets = [0, 50, 60, 80, *([100] * (len(bounds) - 4))]
    assert percentile(0.5, 100, buckets) == pytest.approx(0.01)
    assert 0.05 < percentile(0.95, 100, buckets) <= 0.1
    assert percentile(0.5, 0, buckets) is None
    assert percentile(0.99, 100, [0] * len(bounds)) == float("inf")


def test_old_minutes_are_rolled_up_into_hours_once():
    store = default_task_backend.store
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=2)

    def add(minute, task="t", n=1, outcome="SUCCESSFUL", backend="default"):
        Statistic.objects.create(minute=minute, backend=backend, queue_name="q", task_path=task,
                                 outcome=outcome, n=n, run_n=n, run_us=10 * n, run_le_1s=n)

    for m in (0, 7, 59):
        add(hour + timedelta(minutes=m), n=m + 1)
    add(hour + timedelta(minutes=3), outcome="FAILED", n=5)
    add(hour + timedelta(hours=1, minutes=30), n=100)
    add(hour + timedelta(minutes=7), backend="other", n=1000)  # another backend's
    recent = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=5)
    add(recent, n=7)
    before = timezone.now() - timedelta(hours=26)
    assert store.roll_up_statistics(before) == 2
    rows = {(r.minute, r.backend, r.outcome): (r.n, r.run_n, r.run_us, r.run_le_1s)
            for r in Statistic.objects.all()}
    assert rows == {
        (hour, "default", "SUCCESSFUL"): (1 + 8 + 60, 69, 690, 69),
        (hour, "default", "FAILED"): (5, 5, 50, 5),
        (hour + timedelta(hours=1), "default", "SUCCESSFUL"): (100, 100, 1000, 100),
        (hour + timedelta(minutes=7), "other", "SUCCESSFUL"): (1000, 1000, 10000, 1000),
        (recent, "default", "SUCCESSFUL"): (7, 7, 70, 7),
    }
    assert store.roll_up_statistics(before) == 0  # nothing left off the hour
    assert Statistic.objects.count() == 5


def test_recent_minutes_are_rolled_up_into_quarters():
    store = default_task_backend.store
    quarter = timezone.now().replace(minute=15, second=0, microsecond=0) - timedelta(hours=5)
    for m in (0, 1, 14, 15):
        Statistic.objects.create(minute=quarter + timedelta(minutes=m), backend="default",
                                 queue_name="q", task_path="t", outcome="SUCCESSFUL", n=m + 1)
    # one quarter has minutes off its start; the next holds its start alone already
    assert store.roll_up_statistics(timezone.now() - timedelta(hours=2),
                                    timedelta(minutes=15)) == 1
    assert sorted(Statistic.objects.values_list("minute", "n")) == [
        (quarter, 1 + 2 + 15), (quarter + timedelta(minutes=15), 16)]
    with pytest.raises(ValueError):
        store.roll_up_statistics(timezone.now(), timedelta(minutes=7))


def test_the_workers_prune_duty_rolls_up_and_prunes():
    from django_tasks.worker.duties import prune_statistics

    now = timezone.now().replace(second=0, microsecond=0)
    hour = (now - timedelta(hours=30)).replace(minute=0)
    for minute in (now - timedelta(days=20), hour + timedelta(minutes=10),
                   hour + timedelta(minutes=41), now - timedelta(minutes=3)):
        Statistic.objects.create(minute=minute, backend="default", queue_name="q",
                                 task_path="t", outcome="SUCCESSFUL", n=1)
    worker = TaskWorker(pool="inline", worker_id="w")
    prune_statistics(worker, now)
    # the 20-day-old row is gone (STATS_RETENTION: 14 days); the two of 30 hours ago
    # are one row at their hour's start; the recent minute is as it was
    assert sorted(Statistic.objects.values_list("minute", "n")) == [
        (hour, 2), (now - timedelta(minutes=3), 1)]
