"""Process-level concerns of ``manage.py worker``: signals and logging."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from .loop import TaskWorker
from .phase import Phase

__all__ = ["configure_logging", "install_signal_handlers"]


def install_signal_handlers(worker: TaskWorker) -> None:
    """SIGTERM/SIGINT: stop claiming and finish running jobs; a second one: stop at once.

    The handlers only move the worker's phase and wake its threads, which act at their
    next safe point: a signal never interrupts the worker between taking a job and
    recording it.
    """

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        phase = worker.phase
        if phase >= Phase.ABORTING:
            return  # already on the way out: let it finish
        if phase is Phase.STOPPING:
            worker.abort()
            return
        logging.getLogger("django_tasks.worker").info(
            "%s received: finishing %d running job(s); send it again to stop at once",
            name, worker.pool.running(),
        )
        worker.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def configure_logging(level: str, log_format: str | None = None) -> None:
    """Show the worker's job lines unless the project already routes them somewhere;
    ``log_format`` ``"json"`` (default: the setting ``TASKS_LOG_FORMAT``, else
    ``"text"``) writes them as JSON lines (:class:`~django_tasks.observe.logs.JsonFormatter`),
    on the handler added here or on the handlers the project gave the ``django_tasks``
    logger (a project routing them through the root logger sets its own formatter)."""
    from django.conf import settings

    from ..observe.logs import JsonFormatter

    log_format = log_format or getattr(settings, "TASKS_LOG_FORMAT", "text")
    logger = logging.getLogger("django_tasks")
    logger.setLevel(level.upper())
    formatter = (JsonFormatter() if log_format == "json" else
                 logging.Formatter("[%(asctime)s %(levelname)s %(processName)s] %(message)s"))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    elif log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(formatter)
