import os

import pytest
from django.conf import settings

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_reachable() -> str | None:
    import psycopg

    db = settings.DATABASES["default"]
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


def _skip_redis_tests_without_redis(items) -> None:
    needs = [item for item in items if "redis" in item.keywords]
    if not needs:
        return
    problem = _redis_reachable()
    if problem is None:
        return
    if CI:
        raise pytest.UsageError(f"CI=true and Redis ({settings.REDIS_URL}) is unreachable: "
                                f"{problem}")
    skip = pytest.mark.skip(reason=f"Redis unreachable ({settings.REDIS_URL}): {problem}")
    for item in needs:
        item.add_marker(skip)


def _skip_browser_tests_without_browser(items) -> None:
    from tests.browser import browser_problem

    needs = [item for item in items if "browser" in item.keywords]
    problem = browser_problem() if needs else None
    if problem is None:
        return
    if CI:
        raise pytest.UsageError(f"CI=true and no browser for the admin's browser tests: {problem}")
    skip = pytest.mark.skip(reason=f"no browser: {problem}")
    for item in needs:
        item.add_marker(skip)


def pytest_collection_modifyitems(config, items):
    _skip_redis_tests_without_redis(items)
    _skip_browser_tests_without_browser(items)
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


@pytest.fixture(params=["database", pytest.param("redis", marks=pytest.mark.redis)])
def broker(request):
    """Run the test once per broker (``"database"``, ``"redis"``) as the default backend."""
    if request.param == "redis":
        request.getfixturevalue("redis_default")
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
    """Kill the worker processes a test started and left running (a failed assertion)."""
    from tests.helpers import kill_leftovers

    yield
    kill_leftovers()
