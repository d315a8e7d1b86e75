import os

import pytest
from django.conf import settings

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_reachable(db: dict | None = None) -> str | None:
    import psycopg

    db = db or settings.DATABASES["default"]
    try:
        psycopg.connect(
            host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432,
            user=db.get("USER") or "postgres", password=db.get("PASSWORD") or None,
            dbname="postgres", connect_timeout=3,
        ).close()
    except Exception as exc:
        return str(exc)
    return None


def _redis_reachable() -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _skip_without(items, keyword, problem_of, ci_says, skip_says) -> None:
    """Tests marked ``keyword`` skip when ``problem_of()`` (asked only if there are
    such tests) names a problem; under CI=true that is a failure instead."""
    needs = [item for item in items if keyword in item.keywords]
    problem = problem_of() if needs else None
    if problem is None:
        return
    if CI:
        raise pytest.UsageError(f"CI=true and {ci_says}: {problem}")
    skip = pytest.mark.skip(reason=f"{skip_says}: {problem}")
    for item in needs:
        item.add_marker(skip)


def _skip_redis_tests_without_redis(items) -> None:
    url = settings.REDIS_URL
    _skip_without(items, "redis", _redis_reachable, f"Redis ({url}) is unreachable",
                  f"Redis unreachable ({url})")


def _skip_browser_tests_without_browser(items) -> None:
    from tests.browser import browser_problem

    _skip_without(items, "browser", browser_problem,
                  "no browser for the admin's browser tests", "no browser")


def _rabbitmq_reachable() -> str | None:
    """None if the tests' vhost answers; creates it first with rabbitmqctl (when this
    machine has it and may) if RabbitMQ runs but the vhost does not exist."""
    from urllib.parse import unquote, urlsplit

    from django_tasks.backends.rabbitmq.connection import connect

    def attempt() -> str | None:
        try:
            connect(settings.RABBITMQ_URL, timeout=3.0).close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    problem = attempt()
    if problem is None or "Refused" in problem or "Timeout" in problem:
        return problem
    vhost = unquote(urlsplit(settings.RABBITMQ_URL).path[1:]) or "/"
    user = urlsplit(settings.RABBITMQ_URL).username or "guest"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
            "set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        return attempt()
    return problem


def _rabbitmqctl(*args: str) -> bool:
    import shutil
    import subprocess

    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)
    return done.returncode == 0 or b"already exists" in done.stderr


def _skip_rabbitmq_tests_without_rabbitmq(items) -> None:
    url = settings.RABBITMQ_URL
    _skip_without(items, "rabbitmq", _rabbitmq_reachable, f"RabbitMQ ({url}) is unreachable",
                  f"RabbitMQ unreachable ({url})")


def _rabbitmq_only_where_asked(config, items) -> None:
    """The ``broker`` fixture's RabbitMQ run is kept only for tests marked
    ``rabbitmq_too`` (the contract suite, the workflows, a kill -9 test): the suite's
    time budget allows those; the Redis runs cover the rest of an id-carrying broker."""
    kept, dropped = [], []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("broker")
        if param == "rabbitmq" and "rabbitmq_too" not in item.keywords:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


#: The id-carrying brokers and the browser: what their slow tests test.
_ONE_DATABASE = {"redis", "rabbitmq", "browser"}


def _slow_broker_tests_on_postgres_only(config, items) -> None:
    """In the SQLite session, the slow real-process tests of the Redis and RabbitMQ
    brokers (kill -9, a server restart under load) and the browser's are left to the
    PostgreSQL session, when there is one (PostgreSQL reachable, or CI=true): what they
    test is the broker or the admin, not the job rows' database, whose every behaviour
    the database broker's runs cover on both. Half a minute of each ``make test``."""
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        return
    slow = [item for item in items if "slow" in item.keywords and (
        _ONE_DATABASE & set(item.keywords)
        or getattr(getattr(item, "callspec", None), "params", {}).get("broker")
        in {"redis", "rabbitmq"})]
    if not slow:
        return
    import environ

    url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    if not CI and _postgres_reachable(environ.Env.db_url_config(url)) is not None:
        return  # no PostgreSQL session to run them: run them here
    config.hook.pytest_deselected(items=slow)
    gone = set(map(id, slow))
    items[:] = [item for item in items if id(item) not in gone]


def _own_database_tests_once(config, items) -> None:
    """Tests marked ``own_database`` (the demo's, on a SQLite file of its own) test the
    same thing whichever session runs them: the SQLite one does."""
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return
    once = [item for item in items if "own_database" in item.keywords]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if "own_database" not in item.keywords]


def pytest_collection_modifyitems(config, items):
    _own_database_tests_once(config, items)
    _rabbitmq_only_where_asked(config, items)
    _slow_broker_tests_on_postgres_only(config, items)
    _skip_redis_tests_without_redis(items)
    _skip_browser_tests_without_browser(items)
    _skip_rabbitmq_tests_without_rabbitmq(items)
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        skip = pytest.mark.skip(reason="needs PostgreSQL (run with TEST_DB=postgres)")
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip)
        return
    problem = _postgres_reachable()
    if problem is None:
        return
    if CI:
        raise pytest.UsageError(f"CI=true and PostgreSQL is unreachable: {problem}")
    skip = pytest.mark.skip(reason=f"PostgreSQL unreachable: {problem}")
    for item in items:
        item.add_marker(skip)


def pytest_report_header(config):
    return f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"


def flush_redis_prefix() -> None:
    """Delete this test run's Redis keys (tests/settings.py gives them a prefix)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.TASKS["redis"]["OPTIONS"]["PREFIX"]
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_default(settings, monkeypatch):
    """Make the Redis broker the default backend, here and in worker processes started
    by the test, on an empty key space."""
    flush_redis_prefix()
    settings.TASKS = {**settings.TASKS, "default": {**settings.TASKS["redis"]}}
    monkeypatch.setenv("DJANGO_TASKS_TEST_BROKER", "redis")
    yield
    flush_redis_prefix()


def delete_rabbitmq_queues() -> None:
    """Delete this test run's queues (tests/settings.py gives them a prefix)."""
    from django_tasks.backends.rabbitmq.connection import Topology, connect

    topology = Topology(settings.TASKS["rabbitmq"]["OPTIONS"]["PREFIX"])
    connection = connect(settings.RABBITMQ_URL)
    try:
        channel = connection.channel()
        for queue in settings.TASKS["rabbitmq"]["QUEUES"]:
            channel.queue_delete(topology.name(queue))
    finally:
        connection.close()


@pytest.fixture
def rabbitmq_default(settings, monkeypatch):
    """Make the RabbitMQ broker the default backend, here and in worker processes
    started by the test, on empty queues."""
    from django.tasks import task_backends

    delete_rabbitmq_queues()
    settings.TASKS = {**settings.TASKS, "default": {**settings.TASKS["rabbitmq"]}}
    monkeypatch.setenv("DJANGO_TASKS_TEST_BROKER", "rabbitmq")
    yield
    broker = task_backends["default"].broker
    if hasattr(broker, "close"):
        broker.close()
    delete_rabbitmq_queues()


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker(request):
    """Run the test once per broker (``"database"``, ``"redis"``, ``"rabbitmq"``) as the
    default backend."""
    if request.param in {"redis", "rabbitmq"}:
        request.getfixturevalue(f"{request.param}_default")
    return request.param


@pytest.fixture
def browser():
    """A headless Chromium at 1400x900 (tests/browser.py), closed after the test."""
    from tests.browser import start_chromium

    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """Kill the worker processes a test started and left running (a failed assertion);
    forget the enqueue counts a test did not flush (see pytest_configure)."""
    from django_tasks.jobs.enqueued import COUNTER
    from tests.helpers import kill_leftovers

    yield
    kill_leftovers()
    # Else a later test's COUNTER.flush() adds them to its totals, and the last ones are
    # written at interpreter exit to the database the settings name once the test
    # database is gone (on PostgreSQL: psycopg's "error ignored terminating
    # <psycopg.Pipeline [INERROR]>: pipeline aborted", or rows in a real table).
    COUNTER.take()


def pytest_configure(config):
    # Jobs enqueued by the tests are counted for /metrics without the counter's thread
    # (it would hold a connection to the test database): tests call COUNTER.flush().
    from django_tasks.jobs.enqueued import COUNTER

    COUNTER.background = False
    _empty_only_what_was_written()


#: Rows ``migrate`` made that a test's teardown keeps: without them Django's ``flush``
#: re-creates them by its ``post_migrate`` (40 queries after every transactional test).
_MADE_BY_MIGRATE = {"django_content_type", "auth_permission", "django_migrations"}


def _empty_only_what_was_written() -> None:
    """The teardown of every transactional test (``django_db(transaction=True)``):
    Django's is ``manage.py flush``, a TRUNCATE of every table and then ``post_migrate``
    re-creating content types and permissions: 167-203 ms a test on PostgreSQL, 108 s
    of a 614 s PostgreSQL session. This empties only the tables that hold rows, keeps
    what migrate made (no test writes those), and leaves every table empty as before."""
    from django.core.management.color import no_style
    from django.db import connections
    from django.test import TransactionTestCase

    def fixture_teardown(self: TransactionTestCase) -> None:
        for alias in self._databases_names(include_mirrors=False):
            connection = connections[alias]
            quote = connection.ops.quote_name
            tables = sorted(set(connection.introspection.django_table_names(
                only_existing=True, include_views=False)) - _MADE_BY_MIGRATE)
            with connection.cursor() as cursor:
                cursor.execute("SELECT " + ", ".join(
                    f"EXISTS (SELECT 1 FROM {quote(t)})" for t in tables))
                written = [t for t, rows in zip(tables, cursor.fetchone(), strict=True)
                           if rows]
            if written:  # CASCADE: a table that references one of them, empty or not
                connection.ops.execute_sql_flush(connection.ops.sql_flush(
                    no_style(), written, allow_cascade=True))

    TransactionTestCase._fixture_teardown = fixture_teardown
