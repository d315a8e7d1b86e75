"""The job list stays fast at millions of jobs: no COUNT(*) over the whole table, no
DISTINCT for filter choices, a fixed number of queries per page, search by equality on
indexed columns (benchmarks/admin_pages.py measures the pages at 1M + 1M jobs)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks.admin import jobs as tasks_admin
from django_tasks.models import Job, JobQuerySet

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/django_tasks/job/"
PATHS = ("tests.tasks.add", "tests.tasks.fails_with_type_error", "tests.tasks.routed")


def make_jobs(n, *, when=None, **fields):
    when = when or timezone.now()
    jobs = [Job(task_path=PATHS[i % len(PATHS)], enqueued_at=when - timedelta(seconds=i),
                available_at=when, queue_name=("default", "emails")[i % 2], **fields)
            for i in range(n)]
    Job.objects.bulk_create(jobs)
    return jobs


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def page_queries(client, params=None):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(URL, params or {})
    assert response.status_code == 200
    return response, [q["sql"] for q in queries.captured_queries]


def rows_query(sqls):
    """The query of the listed jobs' rows."""
    [rows] = [sql for sql in sqls if sql.startswith('SELECT "django_tasks_job"."id", ')]
    return rows


def job_queries(sqls):
    table = Job._meta.db_table
    return [sql for sql in sqls if table in sql]


LISTINGS = [{}, {"status__exact": "FAILED"}, {"status__exact": "READY"},
            {"queue_name": "emails"}, {"backend": "default"},
            {"task_path": "tests.tasks.add"}, {"q": "fails_with"}, {"q": "no-such-thing"},
            {"worker_id": "w-1"}, {"status__exact": "FAILED", "worker_id": "w-1"}]


@pytest.mark.parametrize("params", LISTINGS, ids=lambda p: "&".join(f"{k}={v}" for k, v in
                                                                      p.items()) or "all")
def test_the_job_list_never_counts_or_distincts_the_whole_table(admin_client, monkeypatch,
                                                                params):
    monkeypatch.setattr(tasks_admin, "COUNT_CAP", 10)  # 30 jobs are "many"
    make_jobs(30)
    _, sqls = page_queries(admin_client, params)
    for sql in job_queries(sqls):
        assert "DISTINCT" not in sql.upper(), sql
        assert " LIKE " not in sql.upper(), sql
        if "COUNT(" in sql.upper():
            # Only a capped count: COUNT(*) FROM (SELECT ... LIMIT 11).
            assert re.search(r"LIMIT 11\)", sql), sql


def test_a_page_runs_the_same_queries_however_many_jobs(admin_client, monkeypatch):
    monkeypatch.setattr(tasks_admin, "COUNT_CAP", 10)
    # All on one local day, whatever the time of the run (just after midnight, jobs
    # "now" would span two days: one more drill-down probe).
    noon = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    make_jobs(30, when=noon)
    _, some = page_queries(admin_client)
    make_jobs(300, when=noon)
    response, many = page_queries(admin_client)
    # session, user, the task paths (one index probe per distinct path, 3 here, and one
    # finding no more), the worker filter's choices (the worker table), schedules, the
    # capped count, [the planner's estimate past the cap
    # (PostgreSQL)], the rows, the date range, and two probes of the date drill-down
    # (today's jobs, then none after today).
    expected = 14 if connection.vendor == "postgresql" else 13
    assert len(some) == len(many) == expected, "\n".join(many)
    if connection.vendor == "postgresql":
        assert re.search(r"about \d+ jobs", response.text)
    else:
        assert "more than 10 jobs" in response.text
    # The task filter and a search by task share one look-up of the task paths.
    _, searched = page_queries(admin_client, {"status__exact": "READY", "q": "routed"})
    probes = [sql for sql in searched if sql.startswith('SELECT "django_tasks_job"."task_path"')]
    assert len(probes) == 4 and len(searched) == expected


def test_search_by_an_exact_id_is_a_primary_key_lookup(admin_client, monkeypatch):
    jobs = make_jobs(5)
    response, sqls = page_queries(admin_client, {"q": str(jobs[2].pk)})
    rows = rows_query(sqls)
    assert re.search(r'"django_tasks_job"\."id" = ', rows), rows
    assert "task_path" not in rows.split("WHERE", 1)[1].split("ORDER BY")[0]
    assert "1 job" in response.text and str(jobs[2].pk) in response.text
    if connection.vendor == "postgresql":
        queryset, _ = tasks_admin.JobAdmin(Job, None).get_search_results(
            None, Job.objects.all(), str(jobs[2].pk))
        from django.db import transaction

        with transaction.atomic():  # a table this small is read whole unless told not to
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL enable_seqscan = off")
            plan = queryset.explain()
        assert "django_tasks_job_pkey" in plan and "Seq Scan" not in plan, plan


def test_search_by_task_matches_part_of_a_path_by_equality(admin_client):
    make_jobs(6)
    Job.objects.bulk_create([Job(task_path="x.y", enqueued_at=timezone.now(),
                                 available_at=timezone.now(), unique_key="FAILS_WITH")])
    response, sqls = page_queries(admin_client, {"q": "FAILS_with"})
    rows = rows_query(sqls)
    assert "IN ('tests.tasks.fails_with_type_error')" in rows, rows
    assert "2 jobs" in response.text  # two by task (case-insensitive), none by key
    response, _ = page_queries(admin_client, {"q": "FAILS_WITH"})
    assert "3 jobs" in response.text  # ... and the job whose unique key it is


def test_the_job_list_shows_what_it_showed(admin_client):
    [job] = make_jobs(1, status="FAILED", attempts=1, max_attempts=3,
                      progress={"current": 2, "total": 4, "message": "half"})
    response, _ = page_queries(admin_client)
    row = next(r for r in response.text.split("<tr") if str(job.pk) in r)
    for column in ("short_id", "task_path", "state_display", "for_display", "error_display",
                   "queue_name", "worker_display", "attempts_display", "progress_display",
                   "enqueued_display", "finished_display"):
        assert f'class="field-{column}' in row or f'class="nowrap field-{column}' in row, \
            column
    assert "1/3" in row and "half" in row and "Failed" in row
    text = response.text
    for choice in ("?status__exact=FAILED", "?queue_name=default", "?queue_name=emails",
                   "?queue_name=heavy_compute", "?backend=default", "?backend=redis",
                   "?task_path=tests.tasks.add", "enqueued_at__day="):
        assert choice in text, choice
    assert "1 job" in text and "about" not in text
    filtered, _ = page_queries(admin_client, {"task_path": "tests.tasks.add"})
    assert str(job.pk) in filtered.text
    other, _ = page_queries(admin_client, {"task_path": "tests.tasks.routed"})
    assert str(job.pk) not in other.text and "0 jobs" in other.text


def test_the_date_drill_down_finds_the_same_dates_as_distinct(admin_client):
    for when in (datetime(2025, 12, 31, 23, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC),
                 datetime(2026, 1, 2, 12, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC),
                 datetime(2026, 3, 30, tzinfo=UTC)):
        make_jobs(2, when=when)
    admin_qs = tasks_admin.JobAdmin(Job, None).get_queryset(_request())
    assert isinstance(admin_qs, tasks_admin.AdminJobQuerySet)
    for qs in (admin_qs, admin_qs.filter(enqueued_at__year=2026),
               admin_qs.filter(queue_name="emails")):
        for kind in ("year", "month", "day"):
            assert list(qs.datetimes("enqueued_at", kind)) == list(
                JobQuerySet.datetimes(qs, "enqueued_at", kind)), kind
    page = admin_client.get(URL, {"enqueued_at__year": "2026"})
    months = re.findall(r"enqueued_at__month=(\d+)&amp;enqueued_at__year=2026", page.text)
    assert months == ["1", "3"]  # in the current time zone (America/Chicago)


def _request():
    from django.test import RequestFactory

    request = RequestFactory().get(URL)
    request.user = User.objects.create_superuser("other", "o@example.com", "pw")
    return request


@pytest.mark.postgres_only
def test_the_unfiltered_count_is_the_tables_estimate(admin_client, monkeypatch):
    monkeypatch.setattr(tasks_admin, "COUNT_CAP", 10)
    make_jobs(40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_tasks_job")
    response, sqls = page_queries(admin_client)
    assert "about 40 jobs" in response.text
    assert any(sql.startswith("EXPLAIN (FORMAT") for sql in sqls)


def test_the_admin_indexes_are_built_concurrently_on_postgresql(capsys):
    call_command("sqlmigrate", "django_tasks", "0008")
    sql = capsys.readouterr().out
    assert sql.count("CREATE INDEX") == 2
    assert ("CONCURRENTLY" in sql) == (connection.vendor == "postgresql")


def test_only_indexed_columns_are_offered_for_sorting(admin_client):
    make_jobs(2)
    response, _ = page_queries(admin_client)
    sortable = set(re.findall(r'class="sortable[^"]*column-(\w+)', response.text))
    # the primary key and django_tasks_job_enqueued
    assert sortable == {"short_id", "enqueued_display"}


def test_the_worker_filter_and_pages_run_a_fixed_number_of_queries(admin_client):
    """The worker filter's choices come from the worker table; the workers list counts
    each worker's held jobs in its own query (no query per row); a job's page and a
    worker's page run the same queries however many jobs there are."""
    from django.tasks import default_task_backend

    from django_tasks.models import Worker

    def register(first, last):
        for i in range(first, last):
            default_task_backend.store.register_worker(
                id=f"w-{i}", hostname="h", pid=i, backend="default", queues=["default"],
                concurrency=1, pool="inline")

    def count(url):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url).status_code == 200
        return len(queries)

    register(0, 2)
    jobs = make_jobs(5, status="RUNNING", lease="L", worker_id="w-1",
                     last_attempted_at=timezone.now())
    workers = "/admin/django_tasks/worker/"
    urls = (workers, f"{workers}w-1/change/", f"{URL}{jobs[0].pk}/change/")
    [count(url) for url in urls]  # warm Django's caches (content types)
    few = tuple(count(url) for url in urls)
    register(2, 20)
    make_jobs(50, status="RUNNING", lease="L", worker_id="w-1", last_attempted_at=timezone.now())
    Job.objects.filter(pk__in=[j.pk for j in make_jobs(30)]).update(worker_id="w-7", lease="M",
                                                                    status="CLAIMED")
    many = tuple(count(url) for url in urls)
    assert few == many, (few, many)
    assert Worker.objects.count() == 20
    page = admin_client.get(workers).text
    assert '<td class="field-holds">55</td>' in page and '<td class="field-holds">30</td>' in page
    listed, sqls = page_queries(admin_client, {"worker_id": "w-7"})
    assert "30 jobs" in listed.text
    assert any('"django_tasks_worker"' in sql for sql in sqls)  # the filter's choices


@pytest.mark.postgres_only
def test_the_worker_filter_is_served_by_its_index(admin_client):
    from django.db import transaction

    make_jobs(20, worker_id="w-1")
    make_jobs(20)
    queryset = Job.objects.filter(worker_id="w-1").order_by("-enqueued_at")[:50]
    with transaction.atomic():  # a table this small is read whole unless told not to
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.explain()
    assert "django_tasks_job_worker" in plan and "Sort" not in plan, plan
