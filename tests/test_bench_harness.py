"""The benchmark harness's table (benchmarks/bench.py): verdicts, ratios and CPU columns,
from made-up runs (the harness itself is run by ``make bench``, never by the tests)."""

from __future__ import annotations

import os

import pytest

from benchmarks import bench
from benchmarks.cpu_per_job import Cpu, process_tree_cpu


def test_target_verdicts():
    at_most = bench.Target("<=", 250, "µs")
    assert bench.verdict(250.0, at_most) == "yes"
    assert bench.verdict(251.0, at_most) == "NO"
    assert bench.verdict(None, at_most) == "n/a"
    assert bench.verdict(3.0, None) == ""
    assert str(bench.Target(">=", 50_000, "jobs/s")) == "≥ 50,000 jobs/s"
    assert str(bench.Target("<=", 1.3, "x")) == "≤ 1.30x"


def test_rows_take_medians_and_ratios_of_medians():
    one = bench.Figure("database: drain", "jobs/s", runs=[900.0, 1100.0, 1000.0],
                       cpus=[Cpu(300, 100, 0), Cpu(250, 80, 0), Cpu(400, 120, 0)])
    four = bench.Figure("database: drain 4", "jobs/s", runs=[800.0],
                        cpus=[Cpu(600, 150, 0)])
    assert one.value() == 1000.0
    assert one.cpu() == Cpu(300, 100, 0)
    pg = bench.ratio("pg 4 / 1", four, one, bench.Target("<=", 1.3, "x"),
                     lambda f: f.cpu().postgres)
    [row_one, row_pg] = bench.table_rows([(one, {"server": False}), (pg, {})])
    assert row_one == ["database: drain", "1,000 jobs/s", "300 µs", "100 µs", "-", "400 µs",
                       "", ""]
    assert row_pg[1] == "1.50x" and row_pg[-2:] == ["≤ 1.30x", "NO"]


def test_a_ratio_that_rounds_onto_its_target_shows_a_third_decimal():
    def shown(value):
        fig = bench.Figure("enqueue / Celery", "x", bench.Target(">=", 0.9, "x"), runs=[value])
        return bench.table_rows([(fig, {})])[0][1::6]

    assert shown(0.8962) == ["0.896x", "NO"]
    assert shown(0.9004) == ["0.90x", "yes"]
    assert shown(0.87) == ["0.87x", "NO"]


def test_a_failed_run_or_a_missing_api_is_no_verdict():
    failed = bench.Figure("drain", "jobs/s", bench.Target(">=", 4, "x"), runs=[1.0, None])
    assert bench.table_rows([(failed, {})])[0][1:2] == ["FAILED"]
    missing = bench.Figure("bulk", "jobs/s", bench.Target(">=", 50_000, "jobs/s"),
                           note=bench.NO_BULK)
    assert bench.table_rows([(missing, {})])[0][1] == bench.NO_BULK
    assert bench.table_rows([(missing, {})])[0][-1] == "n/a"


def test_bulk_api_is_found_by_name():
    class Task:
        pass

    assert bench.bulk_api(Task()) is None
    task = Task()
    task.enqueue_many = print
    assert bench.bulk_api(task) is print


def test_cpu_of_a_process_tree_counts_the_process_itself():
    assert process_tree_cpu(os.getpid()) >= 0.0
    assert bench.tree_memory(os.getpid())[0] > 0


def test_a_bulk_api_of_another_shape_is_reported_not_raised(monkeypatch):
    def enqueue_many(*, jobs):
        raise AssertionError("not called with this shape")

    monkeypatch.setattr(bench, "bulk_api", lambda task: enqueue_many)
    monkeypatch.setattr(bench.tp, "truncate", lambda: None)
    monkeypatch.setattr(bench.cpu, "reading", lambda *a, **k: Cpu(0, 0, 0))
    fig = bench.Figure("bulk", "jobs/s")
    bench.measure_bulk(fig, "database", 10)
    assert fig.note == "n/a (TypeError)" and fig.runs == []


@pytest.mark.django_db
def test_the_postgres_column_counts_the_backends_of_the_benchmark_database_only():
    # It counted the whole cluster: other people's test databases on a shared server too.
    import psycopg
    from django.db import connection

    from benchmarks import cpu_per_job

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's processes")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_database()")
        mine, dbname = cursor.fetchone()
    try:
        sampler = cpu_per_job.DatabaseCpu(cpu_per_job.postmaster_pid(), dbname,
                                          interval=None)
    except FileNotFoundError:
        pytest.skip("the PostgreSQL server is not on this host")
    params = {**connection.get_connection_params(), "dbname": "postgres"}
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    with psycopg.connect(**params) as other:
        (theirs,) = other.execute("SELECT pg_backend_pid()").fetchone()
        if mine not in sampler.backends():
            pytest.skip("process titles do not name the database (update_process_title)")
        before = sampler.seconds()
        other.execute("SELECT count(*) FROM generate_series(1, 300000)").fetchone()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM generate_series(1, 300000)")
        assert theirs not in sampler.backends()
        assert sampler.seconds() > before
    assert cpu_per_job.POSTGRES_SCOPE == "database"  # what bench.py and cpu_per_job.py count


def test_a_drain_is_read_when_its_workers_exit_before_the_rows_are_counted(monkeypatch):
    # Next to the deep queue the count scans 2,000,000 rows: not the drain's CPU.
    events = []

    class Worker:
        returncode = 0

        def __init__(self, *args, **kwargs):
            events.append("start")

        def communicate(self):
            events.append("exit")
            return "", ""

    monkeypatch.setattr(bench.tp.subprocess, "Popen", Worker)
    monkeypatch.setattr(bench.cpu, "settle", lambda: None)
    monkeypatch.setattr(bench.cpu, "reading", lambda *a, **k: events.append("read") or
                        Cpu(1, 2, 3))
    stop = bench.cpu.Stop(lambda: 0.0)

    def counts():
        events.append("count")
        return {"SUCCESSFUL": 5}

    rate, line = bench.tp.drain_run(5, counts=counts, exited=stop)
    assert rate is not None
    assert events == ["start", "exit", "read", "count"]
    assert stop.used == Cpu(1, 2, 3) and line.startswith("5/5 SUCCESSFUL")
