"""``manage.py beat``: enqueue periodic tasks. All logic lives in django_tasks.beat.scheduler."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

from django_tasks.beat.scheduler import Scheduler
from django_tasks.management.cli import add_loglevel, one_line_errors
from django_tasks.worker.supervisor import configure_logging

logger = logging.getLogger("django_tasks.beat")


class Command(BaseCommand):
    help = (
        "Enqueue periodic tasks when they are due: the schedules of OPTIONS['SCHEDULE'] "
        "(synchronised into the database at start) and those made in the admin. Run as "
        "many as you like, on any machines: each tick is enqueued exactly once. "
        "'manage.py worker --beat' runs the same scheduler inside a worker. SIGTERM or "
        "Ctrl-C stops it."
    )

    def add_arguments(self, parser: Any) -> None:
        one_line_errors(parser)
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias whose schedules to run (default: %(default)s).")
        parser.add_argument("--once", action="store_true",
                            help="Synchronise the settings, run one pass (fire what is due "
                                 "now) and exit: for cron or a test.")
        add_loglevel(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["loglevel"])
        try:
            scheduler = Scheduler(options["backend"])
        except Exception as exc:  # not in TASKS, or not a django_tasks backend
            raise CommandError(str(exc)) from exc
        if options["once"]:
            try:
                scheduler.sync()
                fired = scheduler.run_due()
            except DatabaseError as exc:
                raise CommandError(f"The database is unreachable ({exc}).") from exc
            self.stdout.write(f"{len(fired)} tick(s) enqueued.")
            return
        stop = threading.Event()

        def handle(signum: int, frame: Any) -> None:
            logger.info("%s received: stopping", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        logger.info("Scheduler ready: backend=%s, %d schedule(s) in settings",
                    scheduler.alias, len(scheduler.backend.config.schedule))
        scheduler.serve(stop)
        logger.info("Scheduler stopped")
