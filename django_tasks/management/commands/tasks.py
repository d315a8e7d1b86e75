"""``manage.py tasks``: look after the job table from the terminal."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from django.utils import timezone

from django_tasks.models import Job, Worker
from django_tasks.states import JobStatus

RUNNING_SHOWN = 20
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
        status = sub.add_parser(
            "status", help="Queue depths per queue and status; workers: alive, dead or "
                           "stopped, and how many jobs each holds.")
        status.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias (default: %(default)s).")
        status.add_argument(
            "--recent", type=parse_age, default=timedelta(hours=1), metavar="AGE",
            help="Also list workers stopped within this age (default: 1h).",
        )

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
        self._status(db, jobs, task_backends[options["backend"]].config.worker_timeout,
                     recent=options["recent"])

    def _status(self, db: str, jobs: Any, timeout: float, *, recent: timedelta) -> None:
        now = timezone.now()
        rows = jobs.values("queue_name", "status").annotate(n=Count("pk")).order_by("queue_name")
        depths: dict[str, dict[str, int]] = {}
        for row in rows:
            depths.setdefault(row["queue_name"], {})[row["status"]] = row["n"]
        statuses = list(JobStatus.values)
        self.stdout.write(f"{'queue':<24}" + "".join(f"{s:>12}" for s in statuses))
        for queue, counts in sorted(depths.items()):
            self.stdout.write(f"{queue:<24}" + "".join(f"{counts.get(s, 0):>12}" for s in statuses))
        if not depths:
            self.stdout.write("(no jobs)")
        self.stdout.write("")

        held = dict(
            Job.objects.using(db).held().values_list("worker_id").annotate(n=Count("pk"))
        )
        workers = Worker.objects.using(db).filter(
            Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - recent) | Q(id__in=held)
        ).order_by("started_at")
        self.stdout.write(f"{'worker':<36}{'state':>9}{'pool':>9}{'slots':>6}{'holds':>6}"
                          f"  last heartbeat")
        for w in workers:
            state = w.state(now, timeout)
            age = (now - w.last_heartbeat_at).total_seconds()
            note = f"{age:.1f}s ago"
            if state == "stopped":
                note += f"; stopped: {w.stop_reason or 'shutdown'}"
            elif state == "dead":
                note += f"; silent past WORKER_TIMEOUT ({timeout:g}s), rescued by the next worker"
            self.stdout.write(f"{w.id:<36}{state:>9}{w.pool:>9}{w.concurrency:>6}"
                              f"{held.get(w.id, 0):>6}  {note}")
        if not workers:
            self.stdout.write("(no workers)")
        orphans = {k: v for k, v in held.items() if k not in {w.id for w in workers}}
        for worker_id, n in sorted(orphans.items()):
            self.stdout.write(f"{worker_id or '(none)':<36}{'unknown':>9}{'':>9}{'':>6}{n:>6}  "
                              "not registered; rescued by the next worker")

        running = (Job.objects.using(db).running().order_by("last_attempted_at")
                   .values_list("id", "task_path", "worker_id", "attempts", "max_attempts",
                                "last_attempted_at"))
        shown = list(running[:RUNNING_SHOWN + 1])
        if shown:
            self.stdout.write("")
            self.stdout.write("running jobs (longest first):")
        for job_id, path, worker_id, attempt, most, since in shown[:RUNNING_SHOWN]:
            took = (now - since).total_seconds() if since else 0.0
            self.stdout.write(f"  {job_id}  {path}  on {worker_id}  attempt {attempt}/{most}  "
                              f"for {took:.1f}s")
        if len(shown) > RUNNING_SHOWN:
            self.stdout.write(f"  ... and {running.count() - RUNNING_SHOWN} more")
