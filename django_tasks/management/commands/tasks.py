"""``manage.py tasks``: look after the job table from the terminal."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from django.utils import timezone

from django_tasks.models import Job, Worker

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """'90s', '15m', '12h', '7d', '2w' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise CommandError(
            f"Cannot read the age {text!r}: use a number with a unit, e.g. 90s, 15m, 12h, 7d, 2w."
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit or "s"])


class Command(BaseCommand):
    help = "Inspect and maintain jobs: 'tasks status', 'tasks prune --older-than 7d'."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        prune = sub.add_parser("prune", help="Delete finished jobs older than an age, in batches.")
        prune.add_argument(
            "--older-than", required=True, type=parse_age, metavar="AGE",
            help="Finished longer ago than this: 90s, 15m, 12h, 7d, 2w.",
        )
        prune.add_argument("--batch-size", type=int, default=1000,
                           help="Rows deleted per statement (default: %(default)s).")
        prune.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                           help="TASKS alias (default: %(default)s).")
        status = sub.add_parser("status", help="Queue depths per queue and status, and workers.")
        status.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias (default: %(default)s).")

    def _database(self, alias: str) -> str:
        try:
            return task_backends[alias].database
        except Exception as exc:
            raise CommandError(f"TASKS has no usable backend {alias!r}: {exc}") from exc

    def handle(self, *args: Any, **options: Any) -> None:
        db = self._database(options["backend"])
        jobs = Job.objects.using(db).filter(backend=options["backend"])
        if options["action"] == "prune":
            if options["batch_size"] < 1:
                raise CommandError("--batch-size must be at least 1.")
            cutoff = timezone.now() - options["older_than"]
            deleted = jobs.prune(cutoff, batch_size=options["batch_size"])
            self.stdout.write(f"Deleted {deleted} finished job(s) that finished before "
                              f"{cutoff:%Y-%m-%d %H:%M:%S %Z}.")
            return
        rows = jobs.values("queue_name", "status").annotate(n=Count("pk")).order_by("queue_name")
        depths: dict[str, dict[str, int]] = {}
        for row in rows:
            depths.setdefault(row["queue_name"], {})[row["status"]] = row["n"]
        statuses = ["READY", "RUNNING", "SUCCESSFUL", "FAILED"]
        self.stdout.write(f"{'queue':<24}" + "".join(f"{s:>12}" for s in statuses))
        for queue, counts in sorted(depths.items()):
            self.stdout.write(f"{queue:<24}" + "".join(f"{counts.get(s, 0):>12}" for s in statuses))
        if not depths:
            self.stdout.write("(no jobs)")
        self.stdout.write("")
        workers = Worker.objects.using(db).filter(stopped_at__isnull=True).order_by("started_at")
        self.stdout.write(f"{'worker':<40}{'pool':>10}{'slots':>7}  last heartbeat")
        for w in workers:
            self.stdout.write(f"{w.id:<40}{w.pool:>10}{w.concurrency:>7}  "
                              f"{w.last_heartbeat_at:%Y-%m-%d %H:%M:%S}")
        if not workers:
            self.stdout.write("(no running workers)")
