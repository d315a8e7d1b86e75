"""The hot path's statements, counted: an enqueue, the worker's round trip, a claim.

Several commits were about exactly these counts (one statement per enqueue, one per
round trip on PostgreSQL); these tests fail if a query is added to any of them. They
run in autocommit (``transaction=True``), as a worker and most producers do: a
transaction the test wrapped around them would add savepoints.
"""

import re
from contextlib import contextmanager

import pytest
import redis
from django.db import connection
from django.tasks import task_backends
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks.jobs.messages import Outcome, Start
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

POSTGRES = connection.vendor == "postgresql"


@pytest.fixture
def backend(broker):
    """The default backend, once per broker (the ``broker`` fixture in conftest)."""
    return task_backends["default"]


def kinds(captured):
    """What each captured statement is: its first word, or the claim's own words."""
    out = []
    for query in captured.captured_queries:
        sql = query["sql"]
        if sql.startswith("WITH started AS"):
            out.append("EXCHANGE")
        elif " RETURNING " in sql and "SET status = 'CLAIMED'" in sql:
            out.append("CLAIM")
        elif "SET status = 'RUNNING'" in sql:
            out.append("START")
        elif sql.startswith("UPDATE") and "RETURNING id, status" in sql:
            out.append("OUTCOME")
        else:
            out.append(sql.split()[0].upper())
    return out


@contextmanager
def redis_commands():
    """The names of the commands this process sends to Redis meanwhile (any client)."""
    sent: list[str] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send_packed_command(self, command, check_health=True):
        data = b"".join(command) if isinstance(command, list | tuple) else command
        data = data.encode() if isinstance(data, str) else data
        sent.extend(m.decode() for m in re.findall(rb"^\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", data,
                                                    re.MULTILINE))
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send_packed_command
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_packed_command = original


def flushed(backend):
    """Wait until Redis has the publishes sent so far (the Redis broker sends them
    without waiting for the reply)."""
    getattr(backend.broker, "flush", lambda: None)()


@pytest.fixture(autouse=True)
def _warm(backend):
    """Connections open and scripts loaded, as in a running process: what is counted is
    the steady state, not a connection's handshake."""
    tasks.add.enqueue(0, 0)
    flushed(backend)
    backend.broker.ping()
    backend.broker.claim("warm-up", "W", ["default"], 1)


def test_an_enqueue_is_one_statement(backend, broker):
    with redis_commands() as sent, CaptureQueriesContext(connection) as queries:
        tasks.add.enqueue(1, 2)
        flushed(backend)
    # The database broker: the INSERT, and on PostgreSQL its NOTIFY, in one statement
    # (WITH j AS (INSERT ... RETURNING 1) SELECT pg_notify(...)). The Redis broker: the
    # INSERT, then once it committed one script call (PUBLISH_LUA, sent by its text
    # on the publisher's connection: publisher.py says why).
    assert kinds(queries) == ["WITH" if POSTGRES and broker == "database" else "INSERT"]
    assert sent == (["EVAL"] if broker == "redis" else [])


def round_trip(backend):
    """Three jobs claimed, then a round trip that starts one, writes another's outcome
    and claims two more: every part of the worker's verb."""
    for i in range(5):
        tasks.add.enqueue(i, i)
    flushed(backend)
    first, second, _ = backend.broker.claim("w", "L1", ["default"], 3)
    started = Start(first.id, first.lease, timezone.now().isoformat())
    done = Outcome(id=second.id, lease=second.lease, status="SUCCESSFUL", return_value=1,
                   started_at=timezone.now().isoformat(),
                   finished_at=timezone.now().isoformat())
    with redis_commands() as sent, CaptureQueriesContext(connection) as queries:
        result = backend.broker.exchange("w", lease="L2", starts=[started], outcomes=[done],
                                         queues=["default"], limit=2)
    assert (len(result.claimed), [a.id for a in result.applied], result.stale) == (
        2, [second.id], [])
    return kinds(queries), sent


@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL's round trip")
def test_a_round_trip_is_one_statement_on_postgresql(backend, broker):
    statements, sent = round_trip(backend)
    assert statements == ["EXCHANGE"]  # starts, outcomes and the claim: one statement
    # The Redis broker pops the ids first: one script call (POP_LUA).
    assert sent == (["EVALSHA"] if broker == "redis" else [])


@pytest.mark.skipif(POSTGRES, reason="SQLite's round trip")
def test_a_round_trip_on_sqlite_is_its_parts_in_one_transaction(backend, broker):
    statements, sent = round_trip(backend)
    # One transaction (one write lock): the starts (one executemany), the outcomes
    # (one statement each, in a savepoint: a failing outcome hook fails its job alone),
    # then the claim.
    assert statements == ["BEGIN", "START", "SAVEPOINT", "OUTCOME", "RELEASE", "CLAIM",
                          "COMMIT"]
    assert sent == (["EVALSHA"] if broker == "redis" else [])


def test_a_claim_alone_is_one_statement(backend, broker):
    """An idle worker woken by an enqueue: no start or outcome to write."""
    tasks.add.enqueue(1, 1)
    flushed(backend)
    with redis_commands() as sent, CaptureQueriesContext(connection) as queries:
        result = backend.broker.exchange("w", lease="L", queues=["default"], limit=5)
    assert len(result.claimed) == 1
    assert kinds(queries) == (["CLAIM"] if POSTGRES else ["BEGIN", "CLAIM", "COMMIT"])
    assert sent == (["EVALSHA"] if broker == "redis" else [])
