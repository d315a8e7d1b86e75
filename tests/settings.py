"""Test settings: SQLite by default, PostgreSQL with TEST_DB=postgres."""

import os
import tempfile

import environ

SECRET_KEY = "tests"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # The live server of the browser tests serves the admin's CSS and JavaScript.
    "django.contrib.staticfiles",
    "django_tasks",
    "tests",  # tests/models.py: the table atomic tasks write (tests/test_atomic.py)
]
STATIC_URL = "/static/"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

TEST_DB = os.environ.get("TEST_DB", "sqlite")
if TEST_DB == "postgres":
    DATABASES = {
        "default": environ.Env.db_url_config(
            os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
        )
    }
else:
    # A file, not :memory:, so worker processes started by tests see the same data.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), "django_tasks_tests.sqlite3"),
            # As docs/configuration.md recommends: IMMEDIATE, so a transaction that reads
            # first never fails (or waits out the timeout) when it comes to write.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20,
                        "transaction_mode": "IMMEDIATE"},
            "TEST": {"NAME": os.path.join(tempfile.gettempdir(),
                                          f"django_tasks_test_{os.getpid()}.sqlite3")},
        }
    }
# Worker processes started by the tests connect to the test database directly.
if os.environ.get("DJANGO_TASKS_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DJANGO_TASKS_TEST_DB_NAME"]

_OPTIONS = {
    "ROUTES": {"tests.tasks.routed": "heavy_compute"},
    # Real-process tests can raise it to prove a wake-up came from NOTIFY.
    "POLL_INTERVAL": float(os.environ.get("DJANGO_TASKS_TEST_POLL_INTERVAL", 0.2)),
    # Short, so rescue-by-timeout tests take seconds.
    "HEARTBEAT_INTERVAL": 0.25,
    "WORKER_TIMEOUT": 2.0,
}
# The Redis broker's tests use keys of their own (a prefix per test run, inherited by
# the worker processes they start) on REDIS_URL's server.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("DJANGO_TASKS_TEST_REDIS_PREFIX", f"django_tasks_test:{os.getpid()}")
TASKS = {
    "default": {
        "BACKEND": "django_tasks.backends.database.DatabaseBackend",
        "QUEUES": ["default", "emails", "heavy_compute"],
        "OPTIONS": _OPTIONS,
    },
    "redis": {
        "BACKEND": "django_tasks.backends.redis.RedisBackend",
        "QUEUES": ["default", "emails", "heavy_compute"],
        "OPTIONS": {**_OPTIONS, "URL": REDIS_URL,
                    "PREFIX": os.environ["DJANGO_TASKS_TEST_REDIS_PREFIX"]},
    },
}
# The RabbitMQ broker's tests use queues of their own (a prefix per test run) in a vhost
# of their own, created by tests/conftest.py with rabbitmqctl when it is missing.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL",
                              "amqp://guest:guest@127.0.0.1:5672/django_tasks_test")
os.environ.setdefault("DJANGO_TASKS_TEST_RABBITMQ_PREFIX", f"django_tasks_test.{os.getpid()}")
TASKS["rabbitmq"] = {
    "BACKEND": "django_tasks.backends.rabbitmq.RabbitMQBackend",
    "QUEUES": ["default", "emails", "heavy_compute"],
    "OPTIONS": {**_OPTIONS, "URL": RABBITMQ_URL,
                "PREFIX": os.environ["DJANGO_TASKS_TEST_RABBITMQ_PREFIX"]},
}
# Real-process tests of a broker make it the default backend of the worker too.
if os.environ.get("DJANGO_TASKS_TEST_BROKER") in {"redis", "rabbitmq"}:
    TASKS["default"] = {**TASKS[os.environ["DJANGO_TASKS_TEST_BROKER"]]}
# Real-process tests of the scheduler: a schedule firing every second.
if os.environ.get("DJANGO_TASKS_TEST_SCHEDULE"):
    TASKS["default"]["OPTIONS"] = {**TASKS["default"]["OPTIONS"], "SCHEDULE": {
        "every-second": {"task": "tests.tasks.add", "schedule": 1, "args": [1, 2]},
    }}

# Django 6.1's way to configure email (tests.testing_tasks sends some); the test
# environment replaces every mailer with the locmem one (mail.outbox).
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

# The test suite's tasks live in the tests package, which is not an installed app:
# workers import task modules only from installed apps and TASK_MODULES.
for _backend in TASKS.values():
    _backend["OPTIONS"] = {**_backend.get("OPTIONS", {}), "TASK_MODULES": ["tests"]}
