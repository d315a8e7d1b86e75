"""Settings for the sample project, read from the environment with django-environ.

Variables (all optional; a ``.env`` file next to manage.py is read too):

- ``DATABASE_URL``: default ``sqlite:///db.sqlite3`` (the embedded default);
  e.g. ``postgres://postgres@127.0.0.1:5432/test``.
- ``TASKS_BACKEND``: which broker carries the jobs: ``database`` (default; the
  database of ``TASKS_DATABASE_URL``, or of ``DATABASE_URL`` when unset) or
  ``redis`` (job rows still in that database, the queue in Redis) or ``rabbitmq``
  (the queue in RabbitMQ).
- ``REDIS_URL``: the Redis broker's server, default ``redis://127.0.0.1:6379/0``.
- ``RABBITMQ_URL``: the RabbitMQ broker's server, default
  ``amqp://guest:guest@127.0.0.1:5672/%2F`` (the vhost ``/``).
- ``TASKS_DATABASE_URL``: keep jobs in a database of their own.
- ``TASK_MODULES``: comma-separated modules outside the installed apps that workers
  may import tasks from (the benchmarks set ``benchmarks.bench_tasks``).
- ``DEBUG``, ``SECRET_KEY``, ``ALLOWED_HOSTS``.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from django_tasks.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env("SECRET_KEY", default="django-insecure-sample-project-only")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks",
    "sampleproject.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "sampleproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
WSGI_APPLICATION = "sampleproject.wsgi.application"


def _database(url: str) -> dict:
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the
        # write lock at BEGIN so concurrent writers queue instead of failing.
        config.setdefault("OPTIONS", {}).update(
            {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE",
             "timeout": 20}
        )
    return config


DATABASES = {
    "default": _database(env("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))
}
if env("TASKS_DATABASE_URL", default=""):
    DATABASES["tasks"] = _database(env("TASKS_DATABASE_URL"))
    # The admin (and any query of ours) then reads jobs from that database too.
    DATABASE_ROUTERS = ["django_tasks.routers.TasksRouter"]

BROKERS = {
    "database": "django_tasks.backends.database.DatabaseBackend",
    "redis": "django_tasks.backends.redis.RedisBackend",
    "rabbitmq": "django_tasks.backends.rabbitmq.RabbitMQBackend",
}
TASKS_BACKEND = env("TASKS_BACKEND", default="database")
if TASKS_BACKEND not in BROKERS:
    raise ImproperlyConfigured(
        f"TASKS_BACKEND={TASKS_BACKEND!r}: choose one of {', '.join(BROKERS)}."
    )
TASKS = {
    "default": {
        "BACKEND": BROKERS[TASKS_BACKEND],
        "QUEUES": ["default", "emails", "heavy_compute"],
        "OPTIONS": {
            "DATABASE": "tasks" if "tasks" in DATABASES else "default",
            "ROUTES": {"sampleproject.demo.tasks.encode_video": "heavy_compute"},
            "TASK_MODULES": env.list("TASK_MODULES", default=[]),
            # PostgreSQL: enqueues outside a transaction stop waiting for the disk; a
            # crash of PostgreSQL may then lose the last ~0.6 s of them
            # (docs/configuration.md).
            "ASYNCHRONOUS_COMMIT": env.bool("TASKS_ASYNCHRONOUS_COMMIT", default=False),
            # Periodic tasks: run by `manage.py beat` or `manage.py worker --beat`.
            "SCHEDULE": {
                "clear-sessions-every-midnight": {
                    "task": "sampleproject.demo.tasks.clear_expired_sessions",
                    "schedule": crontab(minute=0, hour=0),
                },
                "add-every-30-seconds": {
                    "task": "sampleproject.demo.tasks.add",
                    "schedule": 30.0,
                    "args": [16, 16],
                },
            },
        },
    }
}
if TASKS_BACKEND == "redis":
    TASKS["default"]["OPTIONS"]["URL"] = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
if TASKS_BACKEND == "rabbitmq":
    TASKS["default"]["OPTIONS"]["URL"] = env("RABBITMQ_URL",
                                             default="amqp://guest:guest@127.0.0.1:5672/%2F")

# Observability (docs/observability.md): spans when opentelemetry-api is installed
# (TASKS_TRACING=false turns them off), the /metrics view's bearer token.
TASKS_TRACING = env.bool("TASKS_TRACING", default=True)
TASKS_METRICS_TOKEN = env("TASKS_METRICS_TOKEN", default="") or None

EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "hello@example.com"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s %(levelname)s %(processName)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_tasks": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "sampleproject": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# manage.py demo enqueues its jobs through this alias: the same job table, queues and
# routes as "default", but its worker claims only the demo's jobs, so a database with
# older jobs (a backlog, or one that never ends) does not hold the demo up.
# It runs a schedule of its own, not the default alias's.
TASKS["demo"] = {**TASKS["default"], "OPTIONS": {
    **{k: v for k, v in TASKS["default"]["OPTIONS"].items() if k != "SCHEDULE"},
    "SCHEDULE": {"demo-add-every-10-seconds": {
        "task": "sampleproject.demo.tasks.add", "schedule": 10.0, "args": [1, 1]}},
}}
