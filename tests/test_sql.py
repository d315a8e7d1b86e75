"""The SQL's homes: every statement on job rows in the two engine modules (and the few
both run as written in jobs/portable.py), checked as text; the engine picked once."""

import ast
import pathlib
import re

import pytest
from django.db import connection, models, transaction
from django.db.utils import ConnectionDoesNotExist

import django_tasks
from django_tasks.backends.base import ModelBackend
from django_tasks.backends.database import DatabaseBackend
from django_tasks.jobs import portable, postgresql, sqlite
from django_tasks.jobs import store as store_module
from django_tasks.jobs.engine import Unavailable
from django_tasks.jobs.messages import APPLIED_COLUMNS
from django_tasks.jobs.rows import JSON_COLUMNS, MESSAGE_COLUMNS
from django_tasks.models import Job, RateLimit, Statistic, Total
from django_tasks.states import JobStatus

HOMES = (postgresql, sqlite, portable)
PACKAGE = pathlib.Path(django_tasks.__file__).parent
QUOTED_WORD = re.compile(r"'([A-Z][A-Z_]*)'")


def sql_texts(module):
    """Every string at the top of ``module`` (its statements and their fragments)."""
    return {name: value for name, value in vars(module).items()
            if isinstance(value, str) and not name.startswith("__")}


def unknown_statuses(texts):
    return {(name, word) for name, text in texts.items() for word in QUOTED_WORD.findall(text)
            if word not in JobStatus.values}


def test_every_status_word_in_the_sql_is_a_job_status():
    texts = {f"{m.__name__}.{n}": t for m in HOMES for n, t in sql_texts(m).items()}
    assert unknown_statuses(texts) == set()
    found = {w for t in texts.values() for w in QUOTED_WORD.findall(t)}
    assert found == set(JobStatus.values) - {"SUCCESSFUL"}  # the look finds them all
    assert unknown_statuses({"typo": "WHERE status = 'REDY'"}) == {("typo", "REDY")}


def test_statements_name_the_job_table_as_both_databases_quote_it():
    table = connection.ops.quote_name(Job._meta.db_table)
    assert table == '"django_tasks_job"'
    # The store's other tables: rate limits' slots, and the statistics and running
    # totals the outcome writes add to (named by their models, quoted alike).
    minute = connection.ops.quote_name(Statistic._meta.db_table)
    assert minute == '"django_tasks_minute"'
    total = connection.ops.quote_name(Total._meta.db_table)
    assert total == '"django_tasks_total"'
    tables = {table, minute, total, connection.ops.quote_name(RateLimit._meta.db_table)}
    for module in HOMES:
        for name, text in sql_texts(module).items():
            assert "{table}" not in text, name
            assert set(re.findall(r'"\w+"', text)) <= tables, name  # the only identifiers quoted


def test_the_row_types_are_columns_of_the_job_table():
    columns = {f.column for f in Job._meta.concrete_fields}
    assert set(MESSAGE_COLUMNS) <= columns and set(APPLIED_COLUMNS) <= columns
    json = {f.column for f in Job._meta.concrete_fields if isinstance(f, models.JSONField)}
    assert json == JSON_COLUMNS


def _string_constants(path):
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_sql_outside_its_homes():
    statement = re.compile(r"^\s*(SELECT|UPDATE|INSERT|DELETE|WITH|LISTEN|NOTIFY)\s"
                           r"|\bRETURNING\b|\bpg_notify\b|\bON CONFLICT\b|\bFROM \"")
    homes = {pathlib.Path(m.__file__) for m in HOMES}
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in homes and "migrations" not in path.parts
        for node in _string_constants(path) if statement.search(node.value)
    ]
    assert found == []
    # and the look finds SQL where there is some
    assert any(statement.search(n.value) for n in _string_constants(pathlib.Path(sqlite.__file__)))


def test_the_database_vendor_is_looked_at_once_when_the_store_is_built():
    uses = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"\.vendor\b", line)]
    assert len(uses) == 1 and uses[0].startswith("jobs/store.py:")


def test_a_database_that_is_neither_postgresql_nor_sqlite_is_reported(monkeypatch):
    monkeypatch.setattr(store_module, "ENGINES", {})
    backend = DatabaseBackend("elsewhere", {"QUEUES": [], "OPTIONS": {}})
    assert isinstance(backend.store.engine, Unavailable)
    [error] = [e for e in backend.check() if e.id == "django_tasks.E005"]
    assert error.msg.endswith(f"database 'default' is {connection.vendor}.")
    with pytest.raises(NotImplementedError, match="PostgreSQL or SQLite, not"):
        backend.store.now()


def test_a_database_alias_not_in_databases_is_reported_by_the_backend():
    backend = DatabaseBackend("elsewhere", {"QUEUES": [], "OPTIONS": {"DATABASE": "nope"}})
    assert {e.id for e in backend.check()} >= {"django_tasks.E002"}
    assert "django_tasks.E005" not in {e.id for e in backend.check()}
    with pytest.raises(ConnectionDoesNotExist):
        backend.store.now()


def test_a_store_knows_its_brokers_republish():
    backend = DatabaseBackend("elsewhere", {"QUEUES": [], "OPTIONS": {}})
    assert isinstance(backend, ModelBackend)
    assert backend.store.republish == backend.broker.republish


# The statements on a worker's held jobs, and the partial indexes each one can use.
# Every worker runs most of them every few seconds (the cancel poll twice a second), so
# a table scan, or a scan of entries that pile up with every job done, is multiplied by
# the number of workers.
HELD_STATEMENTS = {
    # At a worker's exit; on PostgreSQL the planner may take the worker's-jobs index
    # (worker_id, enqueued_at) instead, whose first column serves as well.
    "GIVE_BACK_ALL": ("django_tasks_job_held", "django_tasks_job_worker"),
    "HOLDERS": ("django_tasks_job_held",),
    "RUNNING_OF": ("django_tasks_job_held",),
    "CANCELLED_CLAIMS": ("django_tasks_job_cancelling",),
    "CANCELLING_OF": ("django_tasks_job_cancelling",),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(HELD_STATEMENTS))
def test_the_statements_on_held_jobs_go_through_their_partial_index(name):
    """Each can use its index on both databases: on PostgreSQL the planner proves the
    index's predicate from the query's (shown with sequential scans off: an empty table
    is read whole at any cost); SQLite uses a partial index only where the query's terms
    match the predicate's, which ``lease <> ''`` did not (the cancel poll read the
    whole table). The cancel poll used the held-jobs index on PostgreSQL, reading every
    entry a worker's claims and starts left there until VACUUM."""
    sql = getattr(portable, name)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with transaction.atomic():
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("EXPLAIN " + sql, {"worker": "w"})
                rows = cursor.fetchall()
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, {"worker": "w"})
            rows = cursor.fetchall()
        plan = "\n".join(str(row[-1]) for row in rows)
    assert any(f" {index}" in plan for index in HELD_STATEMENTS[name]), plan
