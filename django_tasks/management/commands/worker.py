"""``manage.py worker``: run jobs. All logic lives in django_tasks.worker."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils.module_loading import autodiscover_modules

from django_tasks.worker import Worker
from django_tasks.worker.pool import POOLS
from django_tasks.worker.supervisor import configure_logging, install_signal_handlers


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


class Command(BaseCommand):
    help = (
        "Run jobs from the task queues. SIGTERM or Ctrl-C stops claiming, lets running "
        "jobs finish and gives back jobs not started; a second signal stops at once."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "-Q", "--queues", default="",
            help="Comma-separated queues to work on (default: all of the backend's QUEUES).",
        )
        parser.add_argument(
            "-c", "--concurrency", type=_positive, default=os.cpu_count() or 1,
            help="Jobs run at once: processes or threads (default: CPU count, %(default)s).",
        )
        parser.add_argument(
            "--pool", choices=[p for p in POOLS if p != "inline"], default="prefork",
            help="prefork: a forked process per slot (default; isolates crashes and CPU "
                 "work). threads: threads in one process (I/O-bound jobs, async tasks).",
        )
        parser.add_argument(
            "--burst", action="store_true",
            help="Exit once no job is ready and none is running (scripts, CI, cron).",
        )
        parser.add_argument(
            "--max-tasks", type=_positive, default=None, metavar="N",
            help="Exit after running N jobs.",
        )
        parser.add_argument(
            "--prefetch", type=int, default=None, metavar="N",
            help="Jobs claimed beyond the free slots, so each claim moves more jobs "
                 "(default: the concurrency; 0: claim only for free slots). Prefetched "
                 "jobs are given back on shutdown.",
        )
        parser.add_argument(
            "--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
            help="TASKS alias whose jobs to run (default: %(default)s).",
        )
        parser.add_argument(
            "--worker-id", default=None,
            help="Name shown in results and the admin (default: host-pid-random).",
        )
        parser.add_argument(
            "--loglevel", default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="Log level of the django_tasks loggers (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["loglevel"])
        # Import every app's tasks module once, before forking, so children share it.
        autodiscover_modules("tasks")
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
        try:
            worker = Worker(
                backend=options["backend"],
                queues=queues,
                concurrency=options["concurrency"],
                pool=options["pool"],
                worker_id=options["worker_id"],
                burst=options["burst"],
                max_tasks=options["max_tasks"],
                prefetch=options["prefetch"],
            )
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        install_signal_handlers(worker)
        worker.run()
