"""``manage.py tasks``: look after the job table from the terminal."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.utils import timezone

from django_tasks.conf import backend
from django_tasks.jobs import summary
from django_tasks.management import verbs
from django_tasks.management.cli import (
    accept_django_options,
    one_line_errors,
    parse_age,
    positive_int,
)
from django_tasks.models import Job, Schedule, ScheduleTick, Worker
from django_tasks.states import JobStatus

RUNNING_SHOWN = 20


def _short(count: Any) -> str:
    """A count in a 7-column cell (a capped one ends with ``+``)."""
    return f"{count.n}+" if getattr(count, "more", False) else str(getattr(count, "n", count))


def before(age: timedelta, option: str, text: str) -> datetime:
    """``age`` ago; CommandError if that is before the calendar starts."""
    try:
        return timezone.now() - age
    except OverflowError:
        raise CommandError(f"{option} {text!r} reaches back before year 1.") from None


class Command(BaseCommand):
    help = ("Inspect and act on jobs: status, list, show ID, retry, cancel, purge QUEUE, "
            "prune. 'manage.py tasks ACTION --help' for each.")

    def add_arguments(self, parser: Any) -> None:
        one_line_errors(parser)
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = sub.add_parser(
            "status", help="Queue depths per queue and status; workers: alive, dead or "
                           "stopped, and how many jobs each holds; with the Redis broker, "
                           "what Redis holds; periodic schedules: state, last and next run.")
        status.add_argument("--backend", default=None,
                            help="TASKS alias (default: every django_tasks backend in turn).")
        status.add_argument(
            "--recent", default="1h", metavar="AGE",
            help="Also list workers stopped within this age (default: 1h).",
        )
        listing = sub.add_parser(
            "list", help="Jobs, newest first, one line each (a failed job's error below "
                         "it); SCHEDULED is a READY job not due yet.")
        listing.add_argument("--status", type=str.upper, choices=verbs.LIST_STATUSES,
                             metavar="STATUS", help="One of: " + ", ".join(verbs.LIST_STATUSES)
                             + " (any case).")
        listing.add_argument("--queue", help="Jobs of this queue only.")
        listing.add_argument("--task", help="A task path, or part of one.")
        listing.add_argument("--worker", help="Jobs this worker holds or last ran.")
        listing.add_argument("--since", metavar="AGE",
                             help="Enqueued within this age: 90s, 15m, 12h, 7d, 2w.")
        listing.add_argument("--limit", type=positive_int, default=20,
                             help="At most this many (default: %(default)s).")
        show = sub.add_parser(
            "show", help="One job as its admin page shows it: the outcome (first for a failed "
                         "job), the call, the attempt timeline with tracebacks.")
        show.add_argument("id", metavar="ID", help="A job id, or a unique start of one.")
        retry = sub.add_parser(
            "retry", help="Queue FAILED jobs again for one more attempt (their errors kept).")
        retry.add_argument("ids", nargs="*", metavar="ID",
                           help="Job ids, or unique starts of them.")
        retry.add_argument("--failed", action="store_true",
                           help="Every FAILED job (of --queue, if given), in batches.")
        retry.add_argument("--queue", help="With --failed: of this queue only.")
        cancel = sub.add_parser(
            "cancel", help="Cancel jobs: one not started never runs; a running one is told "
                           "(context.is_cancelled()) and ends CANCELLED. A finished job is "
                           "left as it is.")
        cancel.add_argument("ids", nargs="+", metavar="ID",
                            help="Job ids, or unique starts of them.")
        purge = sub.add_parser(
            "purge", help="Delete a queue's READY and finished jobs, in batches. Jobs a worker "
                          "holds, WAITING jobs and every job of a workflow stay.")
        purge.add_argument("queue", metavar="QUEUE", help="The queue's name.")
        purge.add_argument("--yes", action="store_true", help="Do not ask first.")
        prune = sub.add_parser(
            "prune", help="Delete finished jobs older than an age, in batches, the rows "
                          "of workers stopped (or silent) since before then, and the "
                          "records of schedule ticks from before then.")
        prune.add_argument(
            "--older-than", required=True, metavar="AGE",
            help="Finished (workers: stopped) longer ago than this: 90s, 15m, 12h, 7d, 2w.",
        )
        prune.add_argument("--batch-size", type=positive_int, default=1000,
                           help="Rows deleted per statement (default: %(default)s).")
        prune.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                           help="TASKS alias (default: %(default)s).")
        prune.add_argument("--dry-run", action="store_true",
                           help="Count what would be deleted; delete nothing.")
        for action in (cancel, listing, show, retry, purge):
            action.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS,
                                help="TASKS alias (default: %(default)s).")
        for action in (prune, cancel, status, listing, show, retry, purge):
            accept_django_options(action)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["backend"] is None:  # status: every backend with a job table
            from django.conf import settings

            aliases = [a for a in getattr(settings, "TASKS", {})
                       if getattr(backend(a), "database", None) is not None]
            for i, alias in enumerate(aliases):
                if len(aliases) > 1:
                    self.stdout.write(("\n" if i else "") + f"== backend {alias} ==")
                self.handle(*args, **{**options, "backend": alias})
            return
        alias = options["backend"]
        try:
            tasks_backend = backend(alias)
        except Exception as exc:  # not in TASKS, or its BACKEND cannot be loaded
            raise CommandError(str(exc)) from exc
        db = getattr(tasks_backend, "database", None)
        if db is None:
            raise CommandError(f"TASKS[{alias!r}] uses {type(tasks_backend).__name__}, which "
                               "keeps no job table; pass --backend with a django_tasks backend.")
        jobs = Job.objects.using(db).filter(backend=alias)
        action = options["action"]
        by = "manage.py tasks " + action
        if action == "cancel":
            verbs.cancel(self.stdout, jobs, options["ids"], alias=alias, by=by)
            return
        if action == "list":
            since = options["since"]
            verbs.list_jobs(self.stdout, jobs, now=tasks_backend.store.now(),
                            status=options["status"], queue=options["queue"],
                            task=options["task"], worker=options["worker"],
                            since=parse_age(since, "--since") if since else None,
                            limit=options["limit"])
            return
        if action == "show":
            verbs.show(self.stdout, verbs.resolve(jobs, options["id"]),
                       now=tasks_backend.store.now())
            return
        if action == "retry":
            if bool(options["ids"]) == options["failed"]:
                raise CommandError("Name the jobs to retry (IDs) or pass --failed, not both.")
            if options["queue"] and not options["failed"]:
                raise CommandError("--queue goes with --failed.")
            selection = jobs.filter(queue_name=options["queue"]) if options["queue"] else jobs
            verbs.retry(self.stdout, selection, options["ids"], failed=options["failed"],
                        by=by)
            return
        if action == "purge":
            verbs.purge(self.stdout, jobs, options["queue"], yes=options["yes"])
            return
        if options["action"] == "prune":
            text = options["older_than"]
            cutoff = before(parse_age(text), "--older-than", text)
            # Live workers are judged by the database's clock, as workers judge each other.
            workers = Worker.objects.using(db).filter(backend=alias).prunable(
                cutoff, now=tasks_backend.store.now(),
                timeout=tasks_backend.config.worker_timeout)
            ticks = ScheduleTick.objects.using(db).filter(schedule__backend=alias)
            if options["dry_run"]:
                counts = (jobs.prunable(cutoff).count(), workers.count(),
                          ticks.prunable(cutoff).count())
                verb = "Would delete"
            else:
                counts = (jobs.prune(cutoff, batch_size=options["batch_size"]),
                          workers.delete()[0], ticks.prune(cutoff))
                verb = "Deleted"
            self.stdout.write(f"{verb} {counts[0]} finished job(s) that finished before "
                              f"{cutoff:%Y-%m-%d %H:%M:%S %Z}, {counts[1]} worker(s) gone "
                              f"since then, and {counts[2]} schedule tick(s) from before then.")
            return
        text = options["recent"]
        recent = parse_age(text, "--recent")
        before(recent, "--recent", text)
        self._status(db, alias, jobs, tasks_backend.config.worker_timeout, recent=recent,
                     now=tasks_backend.store.now())
        broker_lines = tasks_backend.broker.status()
        if broker_lines:
            self.stdout.write("")
            self.stdout.write("\n".join(broker_lines))
        self._schedules(db, alias)
        self._rate_limits(db, alias)

    def _rate_limits(self, db: str, alias: str) -> None:
        """Rate-limited keys in use: the limit, and when the next start slot is free."""
        import time

        from django_tasks.jobs.policy import limit_of
        from django_tasks.models import RateLimit

        rows = list(RateLimit.objects.using(db).filter(backend=alias).order_by("key"))
        if not rows:
            return
        self.stdout.write("")
        self.stdout.write(f"{'rate limit':<50}{'limit':>10}  next free slot")
        for row in rows:
            limit = limit_of(alias, row.key)
            wait = row.next_at - time.time()
            slot = f"in {wait:.1f}s" if wait > 0 else "now"
            self.stdout.write(f"{row.key[-49:]:<50}{limit or '-'!s:>10}  {slot}")

    def _status(self, db: str, alias: str, jobs: Any, timeout: float, *, recent: timedelta,
                now: datetime) -> None:
        """``now``: the database's clock, the one workers claim and judge liveness by.

        The queue table reads what the dashboard and ``/metrics`` read
        (:mod:`django_tasks.observe.numbers`): capped counts from the claim, held and
        waiting indexes, and the last hour's outcomes from the statistics."""
        from django_tasks.observe import numbers

        tasks_backend = backend(alias)
        hour = numbers.hour_counts({db}, now, 1)
        backlogs, _ = numbers.backlogs([tasks_backend], now, also=hour)
        statuses = ["wait", "ready", "later", "claim", "run", "done", "failed", "cancel"]
        self.stdout.write(f"{'queue':<14}" + "".join(f"{h:>7}" for h in statuses)
                          + f"{'oldest':>10}")
        shown = 0
        for row in backlogs:
            done = hour.get((row.backend, row.queue), {})
            cells = [row.waiting, row.ready, row.scheduled, row.claimed, row.running,
                     done.get(JobStatus.SUCCESSFUL, 0), done.get(JobStatus.FAILED, 0),
                     done.get(JobStatus.CANCELLED, 0)]
            if not any(getattr(c, "n", c) for c in cells):
                continue
            shown += 1
            age = row.oldest_age(now)
            late = summary.age(age) if age is not None else "-"
            self.stdout.write(f"{row.queue[:13]:<14}" + "".join(
                f"{_short(c):>7}" for c in cells) + f"{late:>10}")
        if not shown:
            self.stdout.write("(no jobs)")
        else:
            self.stdout.write("(later: READY, not due yet; done, failed, cancel: in the last "
                              "hour;\n oldest: the wait of the oldest due READY job; counts "
                              "stop at 10,000: 10000+)")
        self.stdout.write("")

        # This backend's workers and jobs only (several backends may share a database).
        held = dict(jobs.held().values_list("worker_id").annotate(n=Count("pk")))
        workers = Worker.objects.using(db).filter(backend=alias).filter(
            Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - recent) | Q(id__in=held)
        ).order_by("started_at")
        self.stdout.write(f"{'worker':<22}{'state':>8}{'pool':>8}{'slots':>6}{'holds':>6}"
                          f"  last heartbeat")

        def name(worker_id: str) -> str:
            return worker_id if len(worker_id) <= 21 else "~" + worker_id[-20:]

        for w in workers:
            state = w.state(now, timeout)
            age = (now - w.last_heartbeat_at).total_seconds()
            note = f"{age:.1f}s ago"
            if state == "stopped":
                note += f"; stopped: {w.stop_reason or 'shutdown'}"
            elif state == "dead":
                note += "; rescue due"
            self.stdout.write(f"{name(w.id):<22}{state:>8}{w.pool:>8}{w.concurrency:>6}"
                              f"{held.get(w.id, 0):>6}  {note}")
        if not workers:
            self.stdout.write("(no workers)")
        orphans = {k: v for k, v in held.items() if k not in {w.id for w in workers}}
        for worker_id, n in sorted(orphans.items()):
            self.stdout.write(f"{name(worker_id) or '(none)':<22}{'unknown':>8}{'':>8}{'':>6}"
                              f"{n:>6}  not registered: rescue due")
        if any(w.state(now, timeout) == "dead" for w in workers) or orphans:
            self.stdout.write(f"(rescue due: silent past WORKER_TIMEOUT ({timeout:g}s) or not "
                              "registered;\n the next worker's rescue duty takes its jobs back)")

        running = (jobs.running().order_by("last_attempted_at")
                   .values_list("id", "task_path", "worker_id", "attempts", "max_attempts",
                                "last_attempted_at"))
        shown = list(running[:RUNNING_SHOWN + 1])
        if shown:
            self.stdout.write("")
            self.stdout.write("running jobs (longest first):")
        for job_id, path, worker_id, attempt, most, since in shown[:RUNNING_SHOWN]:
            took = (now - since).total_seconds() if since else 0.0
            self.stdout.write(f"  {summary.short_id(job_id)}  {path}  on {worker_id}  attempt "
                              f"{attempt}/{most}  for {took:.1f}s")
        if len(shown) > RUNNING_SHOWN:
            self.stdout.write(f"  ... and {running.count() - RUNNING_SHOWN} more")

    def _schedules(self, db: str, alias: str) -> None:
        schedules = list(Schedule.objects.using(db).filter(backend=alias).order_by("name"))
        if not schedules:
            return
        self.stdout.write("")
        self.stdout.write(f"{'schedule':<32}{'state':<23}{'last run':<27}{'next run':<27}"
                          "timing")

        def when(value: datetime | None) -> str:
            return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"

        for s in schedules:
            self.stdout.write(f"{s.name:<32}{s.state:<23}{when(s.last_run_at):<27}"
                              f"{when(s.next_run_at if s.state == 'enabled' else None):<27}"
                              f"{s.describe()}  {s.task_path}")
            if s.last_error:
                self.stdout.write(f"  last error: {s.last_error}")
