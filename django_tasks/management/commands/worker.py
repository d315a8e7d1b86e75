"""``manage.py worker``: run jobs. All logic lives in django_tasks.worker."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils.module_loading import autodiscover_modules

from django_tasks.exceptions import WorkerIdInUse
from django_tasks.management.cli import add_loglevel, one_line_errors, positive_int
from django_tasks.observe import tracing
from django_tasks.worker import TaskWorker
from django_tasks.worker.pools import POOLS
from django_tasks.worker.supervisor import configure_logging, install_signal_handlers


def _no_autoscale(value: str) -> None:
    raise argparse.ArgumentTypeError(
        "Celery's autoscaling is not supported: a worker runs -c N slots and an idle slot costs "
        "nothing, so give -c the most you want and scale by running more workers")


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0; got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0; got {value!r}")
    return number


def _kib(value: str) -> int:
    """A memory size: plain KiB, or with a K/M/G suffix (``512M``)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(text[-1:])
    try:
        number = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        number = 0.0
    if not 1 <= number < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a size of at least 1 KiB: KiB, or with a K, M or G suffix (512M); "
            f"got {value!r}"
        )
    return int(number)


class Command(BaseCommand):
    help = (
        "Run jobs from the task queues. SIGTERM or Ctrl-C stops claiming, gives back "
        "prefetched jobs and lets running jobs finish (up to --grace seconds); a second "
        "signal stops at once. Jobs interrupted either way are rescued at once: run "
        "again while attempts remain, else FAILED."
    )

    def add_arguments(self, parser: Any) -> None:
        one_line_errors(parser)
        parser.add_argument(
            "-Q", "--queues", default="",
            help="Comma-separated queues to work on (default: all of the backend's QUEUES).",
        )
        parser.add_argument(
            "-c", "--concurrency", type=positive_int, default=os.cpu_count() or 1,
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
            "--max-tasks", type=positive_int, default=None, metavar="N",
            help="Exit after running N jobs.",
        )
        parser.add_argument(
            "--prefetch", type=_non_negative, default=None, metavar="N",
            help="Jobs held beyond the free slots, so a freed slot starts its next job at "
                 "once and each round trip claims several. Default: adaptive, as many as "
                 "the slots should start within 0.1 s given recent job durations, at most "
                 "128 per slot (short jobs: batches; long jobs: none held back from other "
                 "workers). N: up to N, fixed. Given back if not started within 1 s, "
                 "on shutdown, and rescued if the worker dies.",
        )
        parser.add_argument(
            "--grace", type=_seconds, default=None, metavar="SECONDS",
            help="On SIGTERM, how long running jobs may take to finish before they are "
                 "interrupted and rescued (default: wait for them).",
        )
        parser.add_argument(
            "--cancel-grace", type=_seconds, default=None, metavar="SECONDS",
            help="prefork: a running job asked to cancel is killed this long after the "
                 "worker notices, unless it stops by itself first (tasks' own cancel_grace "
                 "wins). Default: never killed; the task stops when it sees "
                 "context.is_cancelled().",
        )
        parser.add_argument(
            "--max-tasks-per-child", type=positive_int, default=None, metavar="N",
            help="prefork: replace a child process after it ran N jobs (leaky code).",
        )
        parser.add_argument(
            "--max-memory-per-child", type=_kib, default=None, metavar="SIZE",
            help="prefork: replace a child process, after its current job, once its peak "
                 "resident memory exceeds SIZE (KiB, or with a K/M/G suffix: 512M).",
        )
        parser.add_argument(
            "--beat", action="store_true",
            help="Also run the scheduler of periodic tasks (OPTIONS['SCHEDULE'] and the "
                 "admin's schedules), as 'manage.py beat' does. Safe on every worker: each "
                 "tick is enqueued once however many schedulers run.",
        )
        parser.add_argument(
            "--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
            help="TASKS alias whose jobs to run (default: %(default)s).",
        )
        parser.add_argument(
            "--worker-id", "-n", "--hostname", default=None, dest="worker_id",
            help="Name shown in results and the admin (default: host-pid-random); "
                 "unique among live workers. %%h is replaced by the host name, as in "
                 "Celery's -n worker1@%%h.",
        )
        parser.add_argument(
            "--autoscale", type=_no_autoscale, default=None, metavar="MAX,MIN",
            help="Celery's option, refused: a worker has -c slots, idle ones cost nothing; "
                 "scale by running more workers.",
        )
        parser.add_argument(
            "--log-format", choices=("text", "json"), default=None,
            help="'json': one JSON object per log line, with job id, task, queue, attempt, "
                 "duration, outcome and worker id (default: the setting TASKS_LOG_FORMAT, "
                 "else 'text'; docs/observability.md).",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None, metavar="PORT",
            help="Serve /metrics (Prometheus, the 'metrics' extra) on this port from this "
                 "worker; the numbers are read from the database, the same whichever "
                 "process serves them. With TASKS_METRICS_TOKEN set, a scrape must carry "
                 "that bearer token (docs/observability.md).",
        )
        add_loglevel(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging(options["loglevel"], options["log_format"])
        if options["metrics_port"] is not None:
            from django_tasks.observe.prometheus import serve

            serve(options["metrics_port"])
        if options["worker_id"]:
            options["worker_id"] = options["worker_id"].replace("%h", socket.gethostname())
        # Import every app's tasks module once, before forking, so children share it
        # (and OpenTelemetry's, when tracing is on: not on the first job's time).
        autodiscover_modules("tasks")
        tracing.enabled()
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
        pool_options = {
            key: options[key] for key in ("max_tasks_per_child", "max_memory_per_child")
            if options[key] is not None
        }
        if pool_options and options["pool"] != "prefork":
            raise CommandError(
                "--max-tasks-per-child and --max-memory-per-child recycle child processes; "
                "they need --pool prefork."
            )
        try:
            worker = TaskWorker(
                backend=options["backend"],
                queues=queues,
                concurrency=options["concurrency"],
                pool=options["pool"],
                worker_id=options["worker_id"],
                burst=options["burst"],
                max_tasks=options["max_tasks"],
                prefetch=options["prefetch"],
                grace=options["grace"],
                pool_options=pool_options,
                beat=options["beat"],
                cancel_grace=options["cancel_grace"],
            )
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        install_signal_handlers(worker)
        try:
            worker.run()
        except WorkerIdInUse as exc:
            raise CommandError(str(exc)) from exc
        except worker.broker.outage_errors as exc:
            # Only start-up gets here: once running, the worker rides out outages.
            raise CommandError(
                f"Cannot start: {worker.broker.unreachable(exc)} ({type(exc).__name__}: "
                f"{str(exc).strip()}). Nothing was claimed."
            ) from exc
        if worker.crashed:
            raise CommandError("The worker stopped because of a bug (see the traceback "
                               "above); its jobs were given back or will be rescued.")
