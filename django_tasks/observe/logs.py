"""JSON log lines (docs/observability.md#json-logs): ``manage.py worker --log-format
json``, or the setting ``TASKS_LOG_FORMAT = "json"``, or :class:`JsonFormatter` in your
own ``LOGGING``.

The worker's job lines (started, SUCCESSFUL, will retry, FAILED, CANCELLED) carry their
fields as ``extra`` (:func:`job_fields`): ``job_id``, ``task``, ``queue``, ``attempt``,
``max_attempts``, ``worker_id`` and, once the attempt ended, ``outcome`` (SUCCESSFUL,
FAILED, RETRY, CANCELLED) and ``duration`` (seconds). The human format ignores them;
:class:`JsonFormatter` writes them as keys of one JSON object per line.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "JsonFormatter", "job_fields"]

#: The job fields a record may carry, in the order they are written.
FIELDS = ("job_id", "task", "queue", "attempt", "max_attempts", "worker_id", "outcome",
          "duration")


def job_fields(message: Any, worker_id: str, outcome: str | None = None,
               duration: float | None = None) -> dict[str, Any]:
    """The ``extra`` of a job's log line: who ran what, and how it ended."""
    fields = {"job_id": message.id, "task": message.task_path, "queue": message.queue_name,
              "attempt": message.attempt, "max_attempts": message.max_attempts,
              "worker_id": worker_id}
    if outcome is not None:
        fields["outcome"] = outcome
    if duration is not None:
        fields["duration"] = round(duration, 6)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``process``, ``message``, the job fields the record carries, and ``exc_info`` (the
    traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name,
            "process": record.processName, "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
