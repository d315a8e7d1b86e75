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

__all__ = ["BackendOptions", "backend", "may_import", "task_modules"]

_KNOWN = {"DATABASE", "ROUTES", "POLL_INTERVAL", "NOTIFY", "HEARTBEAT_INTERVAL",
          "WORKER_TIMEOUT", "TASK_MODULES", "MAX_PAYLOAD", "WORKER_RETENTION"}
#: Default OPTIONS["MAX_PAYLOAD"]: bytes of JSON a job's arguments may take.
MAX_PAYLOAD = 2 * 1024 * 1024
#: Default OPTIONS["WORKER_RETENTION"]: seconds a stopped worker's row is kept.
WORKER_RETENTION = 7 * 86400.0


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
    #: Task path (or glob, e.g. ``"reports.tasks.*"``) -> queue name, as Celery's task_routes.
    routes: Mapping[str, str] = field(default_factory=dict)
    #: Seconds an idle worker waits before looking for jobs again (NOTIFY wakes it sooner).
    poll_interval: float = 1.0
    #: PostgreSQL: send NOTIFY on enqueue so idle workers start at once.
    notify: bool = True
    #: Seconds between worker heartbeats.
    heartbeat_interval: float = 5.0
    #: Seconds without a heartbeat after which a worker is declared dead and any live
    #: worker rescues its jobs. Must exceed twice HEARTBEAT_INTERVAL.
    worker_timeout: float = 30.0
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
        if "NOTIFY" in options:
            if isinstance(options["NOTIFY"], bool):
                values["notify"] = options["NOTIFY"]
            else:
                problems.append("OPTIONS['NOTIFY'] must be True or False")
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


def backend(alias: str) -> Any:
    """The task backend ``alias``; ValueError naming the configured ones if there is none."""
    from django.tasks import task_backends

    if alias not in task_backends.settings:
        known = ", ".join(sorted(task_backends.settings)) or "none"
        raise ValueError(f"TASKS has no backend {alias!r} (configured: {known}).")
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


def may_import(module: str) -> bool:
    """Whether ``module`` is one of :func:`task_modules` or inside one of them."""
    return any(module == name or module.startswith(name + ".") for name in task_modules())


def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting in {"TASKS", "INSTALLED_APPS"}:
        task_modules.cache_clear()


setting_changed.connect(_forget)
