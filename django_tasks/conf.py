"""Typed backend options, read from ``TASKS[alias]["OPTIONS"]``.

This is the only module that interprets the ``TASKS`` setting beyond what Django
itself reads. Bad values never raise here: they are collected and reported by
``manage.py check`` (``BackendOptions.problems``), and the default is used meanwhile.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BackendOptions"]

_KNOWN = {"DATABASE", "ROUTES", "POLL_INTERVAL", "NOTIFY", "HEARTBEAT_INTERVAL",
          "WORKER_TIMEOUT"}


@dataclass(frozen=True)
class BackendOptions:
    #: Database alias that holds the job table (and, for the database broker, the queue).
    database: str = "default"
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
    def parse(cls, options: Mapping[str, Any]) -> BackendOptions:
        problems: list[str] = []
        values: dict[str, Any] = {}
        unknown = sorted(set(options) - _KNOWN)
        if unknown:
            problems.append(
                f"unknown OPTIONS {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}"
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
        beat = values.get("heartbeat_interval", cls.heartbeat_interval)
        timeout = values.get("worker_timeout", cls.worker_timeout)
        if timeout <= 2 * beat:
            problems.append(
                f"OPTIONS['WORKER_TIMEOUT'] ({timeout:g} s) must exceed twice "
                f"HEARTBEAT_INTERVAL ({beat:g} s), or live workers are declared dead"
            )
            values["worker_timeout"] = 6 * beat
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
