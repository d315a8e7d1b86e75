"""OPTIONS["ASYNCHRONOUS_COMMIT"]: on PostgreSQL an enqueue that is its own transaction
commits without waiting for the disk; one made inside the caller's transaction never
changes how that transaction commits (docs/configuration.md, docs/reliability.md)."""

import pytest
from django.core import checks
from django.db import connection, transaction
from django.tasks import default_task_backend
from django.test.utils import CaptureQueriesContext

from django_tasks.backends.database import DatabaseBackend
from django_tasks.conf import BackendOptions
from django_tasks.models import Job

from . import tasks, unique_tasks

POSTGRES = connection.vendor == "postgresql"
postgres_only = pytest.mark.skipif(not POSTGRES, reason="asynchronous commit: PostgreSQL")
TURNS_IT_OFF = "set_config('synchronous_commit', 'off', true)"


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.fixture
def asynchronous(settings):
    """The default backend with ASYNCHRONOUS_COMMIT on."""
    default = settings.TASKS["default"]
    settings.TASKS = {**settings.TASKS, "default": {
        **default, "OPTIONS": {**default.get("OPTIONS", {}), "ASYNCHRONOUS_COMMIT": True}}}
    assert default_task_backend.store.asynchronous_commit is True


def inserts(queries) -> list[str]:
    return [q["sql"] for q in queries if 'INSERT INTO "django_tasks_job"' in q["sql"]]


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("notify", [None, "django_tasks_default"],
                         ids=["plain (Redis, RabbitMQ)", "with NOTIFY (database broker)"])
def test_the_insert_turns_off_waiting_for_the_disk_for_its_own_transaction(notify):
    # Observed inside a transaction, where the setting outlives the statement: the
    # condition that sets it is evaluated (an INSERT that did not would leave "on").
    backend = default_task_backend
    with transaction.atomic():
        job = backend.new_job(tasks.add, [1, 2], {})
        assert backend.store.engine.insert_one(job, notify=notify)
        assert synchronous_commit() == "on"
        job = backend.new_job(tasks.add, [3, 4], {})
        assert backend.store.engine.insert_one(job, notify=notify, no_disk_wait=True)
        assert synchronous_commit() == "off"
    assert synchronous_commit() == "on"  # for that transaction alone
    assert Job.objects.count() == 2


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_enqueue_of_its_own_commits_without_waiting_for_the_disk(asynchronous):
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.enqueue(1, 2)
    assert [TURNS_IT_OFF in sql for sql in inserts(queries)] == [True]
    assert synchronous_commit() == "on"  # the next transaction waits again
    assert Job.objects.get(pk=result.id).status == "READY"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_unique_enqueue_of_its_own_keeps_its_key(asynchronous):
    with CaptureQueriesContext(connection) as queries:
        first = unique_tasks.unique_add.enqueue(1, 2)
        again = unique_tasks.unique_add.enqueue(1, 2)
    assert again.id == first.id  # the second INSERT ... ON CONFLICT inserted nothing
    assert [TURNS_IT_OFF in sql for sql in inserts(queries)] == [True, True]
    assert Job.objects.count() == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_enqueue_inside_your_transaction_leaves_its_commit_alone(asynchronous):
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            tasks.add.enqueue(1, 2)
        assert synchronous_commit() == "on"  # your transaction still waits for the disk
    assert [TURNS_IT_OFF in sql for sql in inserts(queries)] == [False]
    # Nor does a bulk enqueue (one commit for all its jobs) change how it commits.
    with CaptureQueriesContext(connection) as queries:
        tasks.add.enqueue_many([((1, 2), {}), ((3, 4), {})])
    assert not any(TURNS_IT_OFF in q["sql"] for q in queries)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_without_the_option_every_enqueue_waits_for_the_disk():
    assert default_task_backend.store.asynchronous_commit is False
    with CaptureQueriesContext(connection) as queries:
        tasks.add.enqueue(1, 2)
    assert [TURNS_IT_OFF in sql for sql in inserts(queries)] == [False]


def test_the_option_must_be_a_boolean():
    options = BackendOptions.parse({"ASYNCHRONOUS_COMMIT": "yes"})
    assert options.problems == ("OPTIONS['ASYNCHRONOUS_COMMIT'] must be True or False",)
    assert options.asynchronous_commit is False
    assert BackendOptions.parse({"ASYNCHRONOUS_COMMIT": True}).asynchronous_commit is True


def test_the_check_says_it_does_nothing_off_postgresql():
    backend = DatabaseBackend("asynchronous", {
        "BACKEND": "django_tasks.backends.database.DatabaseBackend",
        "OPTIONS": {"ASYNCHRONOUS_COMMIT": True},
    })
    warnings = [m for m in backend.check() if m.id == "django_tasks.W002"]
    if POSTGRES:
        assert warnings == []
    else:
        assert [m.level for m in warnings] == [checks.WARNING]
        assert "has no effect on SQLite" in warnings[0].msg
