"""The job store's statements on PostgreSQL: prepared once per connection, unless
OPTIONS["PREPARED_STATEMENTS"] says not to; and the worker's round-trip connection
plans claims through an index whatever the statistics say."""

import pytest
from django.db import connection
from django.tasks import default_task_backend

from django_tasks.backends.database import DatabaseBackend
from django_tasks.conf import BackendOptions
from django_tasks.jobs import postgresql

from . import tasks

POSTGRES = connection.vendor == "postgresql"
postgres_only = pytest.mark.skipif(not POSTGRES, reason="prepared statements: PostgreSQL")


def prepared_texts() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def explain_claim() -> str:
    """The plan of a claim of up to 10 jobs of the default queue, on this connection."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + postgresql.CLAIM_READY, {
            "worker": "w", "lease": "L", "queues": ["default"], "backend": "default",
            "now": None, "limit": 10})
        return "\n".join(row[0] for row in cursor.fetchall())


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_store_prepares_its_statements_once_per_connection():
    engine = default_task_backend.store.engine
    assert engine.prepared
    engine.now()
    engine.now()
    mine = [t for t in prepared_texts() if "statement_timestamp()" in t]
    assert len(mine) == 1  # prepared once, executed twice
    # Django's own cursors on the same connection still prepare nothing.
    tasks.add.enqueue(1, 2)
    assert not [t for t in prepared_texts() if "django_tasks_job" in t and "INSERT" in t
                and "pg_notify" not in t]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_prepared_statements_can_be_turned_off(settings):
    settings.TASKS = {"default": {
        "BACKEND": "django_tasks.backends.database.DatabaseBackend",
        "OPTIONS": {"PREPARED_STATEMENTS": False},
    }}
    backend = DatabaseBackend("off", settings.TASKS["default"])
    assert backend.store.engine.prepared is False
    connection.close()  # a fresh session: nothing prepared by earlier tests
    backend.store.engine.now()
    assert not [t for t in prepared_texts() if "statement_timestamp()" in t]


def test_prepared_statements_option_must_be_a_boolean():
    options = BackendOptions.parse({"PREPARED_STATEMENTS": "no"})
    assert options.problems == ("OPTIONS['PREPARED_STATEMENTS'] must be True or False",)
    assert BackendOptions.parse({"PREPARED_STATEMENTS": False}).prepared_statements is False


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_round_trip_connection_claims_through_the_index_with_stale_statistics():
    # Statistics of an empty table, then a burst of enqueues: what a claim planned
    # freely turned into a scan of every ready row of the queue.
    with connection.cursor() as cursor:
        cursor.execute('ANALYZE "django_tasks_job"')
    for i in range(300):
        tasks.add.enqueue(i, i)
    default_task_backend.broker.prepare_connection()
    try:
        plan = explain_claim()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_bitmapscan")
            cursor.execute("RESET enable_seqscan")
    assert "Bitmap" not in plan and "Seq Scan" not in plan, plan
    assert "django_tasks_job_claim_q" in plan, plan


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_round_trip_connection_plans_its_statements_once():
    # Left to choose, PostgreSQL planned the round trip anew on every execution.
    import uuid

    from django_tasks.jobs.messages import ByQueues, Outcome, Start

    for i in range(40):
        tasks.add.enqueue(i, i)
    store = default_task_backend.store
    default_task_backend.broker.prepare_connection()
    try:
        held = []
        for _ in range(8):
            now = "2026-01-01T00:00:00+00:00"
            outcomes = [Outcome(id=m.id, lease=m.lease, status="SUCCESSFUL", return_value=None,
                                error=None, finished_at=now, started_at=now) for m in held[:2]]
            starts = [Start(m.id, m.lease, now) for m in held[2:]]
            held = store.exchange("w", lease=uuid.uuid4().hex, starts=starts,
                                  outcomes=outcomes, claim=ByQueues(("default",), 4)).claimed
        with connection.cursor() as cursor:
            cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                           "WHERE statement LIKE 'WITH started AS %%'")
            (generic, custom), = cursor.fetchall()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ALL")
    assert (generic, custom) == (7, 0)  # the first had nothing to write: the claim alone


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_round_trip_connection_compiles_nothing():
    # A generic plan costs the claim as reading a tenth of the queue: with a million
    # ready jobs that passed jit_above_cost and every round trip was JIT-compiled (45
    # ms instead of 1.9). jit_above_cost = 0 stands for that estimate here.
    tasks.add.enqueue(1, 2)
    with connection.cursor() as cursor:
        cursor.execute("SET jit_above_cost = 0")
    default_task_backend.broker.prepare_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW jit")
            assert cursor.fetchone()[0] == "off"
        plan = explain_claim()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ALL")
    assert "JIT" not in plan, plan


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_only_the_claim_alone_commits_without_waiting_for_the_disk():
    """An idle worker's claim (nothing else to write) turns ``synchronous_commit`` off
    for its own transaction; a round trip that writes starts or outcomes keeps it on."""
    from django.db import transaction
    from django.utils import timezone

    from django_tasks.jobs.messages import ByQueues, Start

    store = default_task_backend.store
    engine = store.engine
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)

    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    assert synchronous_commit() == "on"
    with transaction.atomic():
        first = engine.claim("w", "L1", ByQueues(["default"], 1), None)
        assert len(first) == 1
        assert synchronous_commit() == "off"
    assert synchronous_commit() == "on"  # this transaction only, not the session
    with transaction.atomic():
        rows, _ = engine.exchange(store, "w", "L2",
                                  [Start(str(first[0].id), "L1", timezone.now().isoformat())],
                                  [], ByQueues(["default"], 1), None)
        assert len(rows) == 1
        assert synchronous_commit() == "on"


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("no_disk_wait", [True, False])
def test_a_claim_by_ids_alone_skips_the_disk_only_when_the_broker_says(no_disk_wait):
    """A claim by ids made alone (``ByIds.no_disk_wait``: the Redis and RabbitMQ brokers'
    idle claims, which recover a lost claim) commits without waiting for the disk; a
    claim by ids that does not say so waits, as before."""
    from django.db import transaction

    from django_tasks.jobs.messages import ByIds

    engine = default_task_backend.store.engine
    job_id = tasks.add.enqueue(1, 1).id

    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    with transaction.atomic():
        rows = engine.claim("w", "L1", ByIds([job_id], no_disk_wait=no_disk_wait), None)
        assert [str(r.id) for r in rows] == [job_id]
        assert synchronous_commit() == ("off" if no_disk_wait else "on")
    assert synchronous_commit() == "on"
