"""The benchmark harness's table (benchmarks/bench.py): verdicts, ratios and CPU columns,
from made-up runs (the harness itself is run by ``make bench``, never by the tests)."""

from __future__ import annotations

import os

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
