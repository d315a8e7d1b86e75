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


def pytest_collection_modifyitems(config, items):
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
