"""Typed backend options, read from ``TASKS[alias]["OPTIONS"]``.

This is the only module that interprets the ``TASKS`` setting beyond what Django
itself reads. Bad values never raise here: they are collected and reported by
``manage.py check`` (``BackendOptions.problems``), and the default is used meanwhile.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.core.signals import setting_changed

__all__ = ["BackendOptions", "ScheduleEntry", "backend", "may_import", "task_modules"]

_KNOWN = {"DATABASE", "ROUTES", "POLL_INTERVAL", "NOTIFY", "HEARTBEAT_INTERVAL",
          "WORKER_TIMEOUT", "TASK_MODULES", "MAX_PAYLOAD", "WORKER_RETENTION", "SCHEDULE",
          "RATE_LIMITS", "STATS_RETENTION", "PREPARED_STATEMENTS", "ASYNCHRONOUS_COMMIT"}
#: What a SCHEDULE entry may say (Celery's beat_schedule keys, plus ours).
_SCHEDULE_KEYS = {"task", "schedule", "args", "kwargs", "queue", "priority", "options",
                  "timezone", "catch_up", "enabled"}
#: What a Celery entry's "options" may say here (others have no meaning for us).
_SCHEDULE_OPTIONS = {"queue", "priority"}
CATCH_UP = ("skip", "latest", "all")
#: Default OPTIONS["MAX_PAYLOAD"]: bytes of JSON a job's arguments may take.
MAX_PAYLOAD = 2 * 1024 * 1024
#: Default OPTIONS["WORKER_RETENTION"]: seconds a stopped worker's row is kept.
WORKER_RETENTION = 7 * 86400.0
#: Default OPTIONS["STATS_RETENTION"]: seconds the per-minute statistics are kept (the
#: dashboard's longest chart is 7 days).
STATS_RETENTION = 14 * 86400.0


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``OPTIONS["SCHEDULE"]`` entry, checked (see docs/periodic.md)."""

    name: str
    task: str
    #: A ``schedules.crontab`` or ``schedules.Interval``.
    timing: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = ""  # "" = the task's queue (or ROUTES)
    priority: int | None = None  # None = the task's priority
    timezone: str = ""  # "" = settings.TIME_ZONE (or the crontab's own tz)
    catch_up: str = "skip"
    enabled: bool = True


def is_zone(name: Any) -> bool:
    """Whether ``name`` is an IANA time zone name this system knows."""
    from zoneinfo import ZoneInfo

    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return False
    return True


def parse_schedule_entry(name: Any, entry: Any) -> tuple[ScheduleEntry | None, list[str]]:
    """One SCHEDULE entry, or None and the reasons it is refused."""
    from .schedules import crontab, parse_schedule

    where = f"OPTIONS['SCHEDULE'][{name!r}]"
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return None, [f"{where}: a schedule's name must be a non-empty string of at most "
                      "200 characters"]
    if not isinstance(entry, Mapping):
        return None, [f"{where} must be a dict with at least 'task' and 'schedule'"]
    problems: list[str] = []
    unknown = sorted(set(entry) - _SCHEDULE_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(sorted(_SCHEDULE_KEYS))}")
    task = entry.get("task")
    if not isinstance(task, str) or "." not in task:
        problems.append(f"{where}['task'] must be a task's dotted path, e.g. "
                        "'myapp.tasks.clear_cache'")
    timing = None
    if "schedule" not in entry:
        problems.append(f"{where} has no 'schedule': give crontab(...), a cron string, a "
                        "timedelta or a number of seconds")
    else:
        try:
            timing = parse_schedule(entry["schedule"])
        except ValueError as exc:
            problems.append(f"{where}['schedule']: {exc}")
    args = entry.get("args", ())
    if not isinstance(args, list | tuple):
        problems.append(f"{where}['args'] must be a list")
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        problems.append(f"{where}['kwargs'] must be a dict with string keys")
    options = entry.get("options", {})
    if not isinstance(options, Mapping) or set(options) - _SCHEDULE_OPTIONS:
        problems.append(f"{where}['options'] may only set {', '.join(sorted(_SCHEDULE_OPTIONS))}"
                        " (Celery's other options have no meaning here)")
        options = {}
    queue = entry.get("queue", options.get("queue", ""))
    if not isinstance(queue, str):
        problems.append(f"{where}['queue'] must be a queue name")
    priority = entry.get("priority", options.get("priority"))
    if priority is not None and (type(priority) is not int or not -100 <= priority <= 100):
        problems.append(f"{where}['priority'] must be a whole number from -100 to 100")
    zone = entry.get("timezone", "")
    if zone and not is_zone(zone):
        problems.append(f"{where}['timezone'] {zone!r} is not a time zone name such as "
                        "'Europe/Paris'")
    own = getattr(timing, "tz", None) if isinstance(timing, crontab) else None
    if own is not None:
        own_name = getattr(own, "key", None) or str(own)
        if zone and zone != own_name:
            problems.append(f"{where}: the zone is given twice, 'timezone' {zone!r} and "
                            f"crontab(tz={own_name!r}): keep one")
        elif not is_zone(own_name):
            problems.append(f"{where}['schedule']: crontab(tz={own!r}) must name a time zone "
                            "such as 'Europe/Paris' (stored by name)")
        zone = own_name
    catch_up = entry.get("catch_up", "skip")
    if catch_up not in CATCH_UP:
        problems.append(f"{where}['catch_up'] must be one of {', '.join(map(repr, CATCH_UP))}; "
                        f"got {catch_up!r}")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{where}['enabled'] must be True or False")
    if problems:
        return None, problems
    return ScheduleEntry(name=name, task=task, timing=timing, args=tuple(args),
                         kwargs=dict(kwargs), queue=queue, priority=priority,
                         timezone=zone or "", catch_up=catch_up, enabled=enabled), []


@dataclass(frozen=True)
class BackendOptions:
    #: Database alias that holds the job table (and, for the database broker, the queue).
    database: str = "default"
    #: Modules or packages outside INSTALLED_APPS whose tasks may be enqueued and run.
    task_modules: tuple[str, ...] = ()
    #: Bytes of JSON a job's arguments may take (None: no limit).
    max_payload: int | None = MAX_PAYLOAD
    #: Seconds a stopped (or declared dead) worker's row is kept before workers prune it.
    worker_retention: float = WORKER_RETENTION
    #: Seconds the per-minute statistics (the dashboard's history) are kept before
    #: workers prune them.
    stats_retention: float = STATS_RETENTION
    #: Task path (or glob, e.g. ``"reports.tasks.*"``) -> queue name, as Celery's task_routes.
    routes: Mapping[str, str] = field(default_factory=dict)
    #: Seconds an idle worker waits before looking for jobs again (NOTIFY wakes it sooner).
    poll_interval: float = 1.0
    #: PostgreSQL: send NOTIFY on enqueue so idle workers start at once.
    notify: bool = True
    #: PostgreSQL: the job store's statements are prepared once per connection
    #: (turn off behind a pooler that cannot keep them: PgBouncer before 1.21 in
    #: transaction mode).
    prepared_statements: bool = True
    #: PostgreSQL: an enqueue that is its own transaction (autocommit) commits without
    #: waiting for its WAL to reach the disk. Faster; a crash of PostgreSQL (not a
    #: restart) can lose the last fraction of a second of such enqueues.
    asynchronous_commit: bool = False
    #: Seconds between worker heartbeats.
    heartbeat_interval: float = 5.0
    #: Seconds without a heartbeat after which a worker is declared dead and any live
    #: worker rescues its jobs. Must exceed twice HEARTBEAT_INTERVAL.
    worker_timeout: float = 30.0
    #: Periodic tasks (OPTIONS["SCHEDULE"]), in the order given.
    schedule: tuple[ScheduleEntry, ...] = ()
    #: Queue name -> its rate limit (OPTIONS["RATE_LIMITS"], Celery's syntax: "100/m"),
    #: held across every worker (django_tasks.rates).
    rate_limits: Mapping[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, options: Mapping[str, Any],
              broker_options: frozenset[str] = frozenset()) -> BackendOptions:
        """Read ``options``; ``broker_options`` are the broker's own keys (it reads them)."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        known = _KNOWN | broker_options
        unknown = sorted(set(options) - known)
        if unknown:
            problems.append(
                f"unknown OPTIONS {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if "DATABASE" in options:
            if isinstance(options["DATABASE"], str):
                values["database"] = options["DATABASE"]
            else:
                problems.append("OPTIONS['DATABASE'] must be a database alias (a string)")
        if "ROUTES" in options:
            routes = options["ROUTES"]
            if isinstance(routes, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in routes.items()
            ):
                values["routes"] = dict(routes)
            else:
                problems.append(
                    "OPTIONS['ROUTES'] must map task paths to queue names, e.g. "
                    "{'myapp.tasks.process_video': 'heavy_compute'}"
                )
        for key, attr in (("POLL_INTERVAL", "poll_interval"),
                          ("HEARTBEAT_INTERVAL", "heartbeat_interval"),
                          ("WORKER_TIMEOUT", "worker_timeout")):
            if key in options:
                value = options[key]
                if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                    values[attr] = float(value)
                else:
                    problems.append(f"OPTIONS['{key}'] must be a number of seconds > 0")
        for key, attr in (("NOTIFY", "notify"), ("PREPARED_STATEMENTS", "prepared_statements"),
                          ("ASYNCHRONOUS_COMMIT", "asynchronous_commit")):
            if key in options:
                if isinstance(options[key], bool):
                    values[attr] = options[key]
                else:
                    problems.append(f"OPTIONS['{key}'] must be True or False")
        if "TASK_MODULES" in options:
            modules = options["TASK_MODULES"]
            if isinstance(modules, list | tuple) and all(
                isinstance(m, str) and m.strip(".") == m and m for m in modules
            ):
                values["task_modules"] = tuple(modules)
            else:
                problems.append(
                    "OPTIONS['TASK_MODULES'] must be a list of dotted module or package "
                    "names, e.g. ['myproject.tasks']"
                )
        if "MAX_PAYLOAD" in options:
            limit = options["MAX_PAYLOAD"]
            if limit is None or (type(limit) is int and limit > 0):
                values["max_payload"] = limit
            else:
                problems.append(
                    "OPTIONS['MAX_PAYLOAD'] must be a number of bytes > 0 (e.g. 4 * 1024 * "
                    "1024), or None for no limit"
                )
        if "WORKER_RETENTION" in options:
            value = options["WORKER_RETENTION"]
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                values["worker_retention"] = float(value)
            else:
                problems.append("OPTIONS['WORKER_RETENTION'] must be a number of seconds > 0")
        if "STATS_RETENTION" in options:
            value = options["STATS_RETENTION"]
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                values["stats_retention"] = float(value)
            else:
                problems.append("OPTIONS['STATS_RETENTION'] must be a number of seconds > 0 "
                                "(e.g. 14 * 86400)")
        if "SCHEDULE" in options:
            schedule = options["SCHEDULE"]
            if isinstance(schedule, Mapping):
                entries = []
                for name, entry in schedule.items():
                    parsed, errors = parse_schedule_entry(name, entry)
                    problems.extend(errors)
                    if parsed is not None:
                        entries.append(parsed)
                values["schedule"] = tuple(entries)
            else:
                problems.append("OPTIONS['SCHEDULE'] must map names to entries, e.g. "
                                "{'clear-cache-every-midnight': {'task': "
                                "'myapp.tasks.clear_cache', 'schedule': crontab(minute=0, "
                                "hour=0)}}")
        if "RATE_LIMITS" in options:
            values["rate_limits"] = _rate_limits(options["RATE_LIMITS"], problems)
        beat = values.get("heartbeat_interval", cls.heartbeat_interval)
        timeout = values.get("worker_timeout", cls.worker_timeout)
        if timeout <= 2 * beat:
            problems.append(
                f"OPTIONS['WORKER_TIMEOUT'] ({timeout:g} s) must exceed twice "
                f"HEARTBEAT_INTERVAL ({beat:g} s), or live workers are declared dead"
            )
            values["worker_timeout"] = 6 * beat
        retention = values.get("worker_retention", cls.worker_retention)
        timeout = values.get("worker_timeout", timeout)
        if retention <= timeout:
            problems.append(
                f"OPTIONS['WORKER_RETENTION'] ({retention:g} s) must exceed WORKER_TIMEOUT "
                f"({timeout:g} s), or the rows of live workers are deleted"
            )
            values["worker_retention"] = max(WORKER_RETENTION, 2 * timeout)
        return cls(**values, problems=tuple(problems))

    def route(self, task_path: str) -> str | None:
        """The queue ROUTES assigns to ``task_path``: exact match first, then globs in order."""
        routes = self.routes
        if task_path in routes:
            return routes[task_path]
        for pattern, queue in routes.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(task_path, pattern):
                return queue
        return None


def _rate_limits(value: Any, problems: list[str]) -> dict[str, Any]:
    """OPTIONS["RATE_LIMITS"], checked: queue name -> Rate."""
    from .rates import parse_rate

    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        problems.append("OPTIONS['RATE_LIMITS'] must map queue names to rates, e.g. "
                        "{'emails': '100/m'}")
        return {}
    limits = {}
    for queue, text in value.items():
        try:
            rate = parse_rate(text)
        except ValueError as exc:
            problems.append(f"OPTIONS['RATE_LIMITS'][{queue!r}]: {exc}")
            continue
        if rate is not None:
            limits[queue] = rate
    return limits


def backend(alias: str) -> Any:
    """The task backend ``alias``; ``ImproperlyConfigured`` naming the configured ones if
    there is none."""
    from django.core.exceptions import ImproperlyConfigured
    from django.tasks import task_backends

    if alias not in task_backends.settings:
        known = ", ".join(sorted(task_backends.settings)) or "none"
        raise ImproperlyConfigured(f"TASKS has no backend {alias!r} (configured: {known}).")
    return task_backends[alias]


@cache
def task_modules() -> tuple[str, ...]:
    """The packages and modules whose tasks workers may import: every installed app's
    package, and each backend's ``OPTIONS["TASK_MODULES"]``."""
    from django.apps import apps
    from django.conf import settings

    names = [app.name for app in apps.get_app_configs()]
    for params in getattr(settings, "TASKS", {}).values():
        names.extend(BackendOptions.parse(params.get("OPTIONS", {})).task_modules)
    return tuple(dict.fromkeys(names))


@cache
def may_import(module: str) -> bool:
    """Whether ``module`` is one of :func:`task_modules` or inside one of them (asked
    for every job a worker runs: remembered)."""
    return any(module == name or module.startswith(name + ".") for name in task_modules())


def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting in {"TASKS", "INSTALLED_APPS"}:
        task_modules.cache_clear()
        may_import.cache_clear()


setting_changed.connect(_forget)
