"""Process-level concerns of ``manage.py worker``: signals and logging."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from .loop import Abort, Worker

__all__ = ["configure_logging", "install_signal_handlers"]


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT: stop claiming and finish running jobs; a second one: stop at once."""

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if worker.shutting_down:
            return  # already writing outcomes and signing off: let it finish
        if worker.stopping:
            # Set before raising: a third signal arriving before shutdown() starts must
            # not interrupt the way out.
            worker.shutting_down = True
            raise Abort(name)
        logging.getLogger("django_tasks.worker").info(
            "%s received: finishing %d running job(s); send it again to stop at once",
            name, worker.pool.running(),
        )
        worker.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def configure_logging(level: str) -> None:
    """Show the worker's job lines unless the project already routes them somewhere."""
    logger = logging.getLogger("django_tasks")
    logger.setLevel(level.upper())
    # Django's own "django.tasks" logger repeats each start/finish at INFO; the worker's
    # lines carry more, so it follows the same level.
    logging.getLogger("django.tasks").setLevel(max(logging.WARNING, logger.level))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s %(levelname)s %(processName)s] %(message)s")
        )
        logger.addHandler(handler)
