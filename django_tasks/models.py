"""Where jobs and workers live. Only backends and the admin touch these directly."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .histograms import RUN_COLUMNS, WAIT_COLUMNS
from .ids import uuid7
from .states import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FINISHED,
    HELD,
    READY,
    RUNNING,
    WAITING,
    JobStatus,
)

__all__ = ["Dashboard", "Job", "Schedule", "ScheduleTick", "Statistic", "Total", "Worker"]


class JobQuerySet(models.QuerySet):
    def ready(self, now: datetime, queues: list[str] | None = None) -> JobQuerySet:
        """Jobs a worker may claim at ``now``, in claim order."""
        qs = self.filter(status=READY, available_at__lte=now)
        if queues:
            qs = qs.filter(queue_name__in=queues)
        return qs.order_by("-priority", "available_at")

    def running(self) -> JobQuerySet:
        return self.filter(status=RUNNING)

    def held(self) -> JobQuerySet:
        """Jobs a worker holds: claimed (not started yet) or running, under a lease."""
        return self.filter(status__in=HELD).exclude(lease="")

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=FINISHED)

    def failed(self) -> JobQuerySet:
        return self.filter(status=FAILED)

    def cancelling(self) -> JobQuerySet:
        """Held jobs asked to cancel: their worker has yet to stop them."""
        return self.held().filter(cancellation__isnull=False)

    def prunable(self, before: datetime) -> JobQuerySet:
        """Finished jobs that finished before ``before``."""
        return self.finished().filter(finished_at__lt=before)

    def prune(self, before: datetime, *, batch_size: int = 1000) -> int:
        """Delete finished jobs that finished before ``before``, in batches; returns how many."""
        total = 0
        while True:
            ids = list(self.prunable(before).values_list("pk", flat=True)[:batch_size])
            if not ids:
                return total
            total += self.model._base_manager.using(self.db).filter(pk__in=ids).delete()[0]


class Job(models.Model):
    """One enqueued call of a task and everything that happened to it."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    task_path = models.CharField(_("task"), max_length=255)
    backend = models.CharField(max_length=100, default="default", db_default="default")
    queue_name = models.CharField(
        _("queue"), max_length=100, default="default", db_default="default"
    )
    priority = models.SmallIntegerField(default=0, db_default=0)
    status = models.CharField(
        max_length=20, choices=JobStatus.choices, default=READY, db_default=READY
    )
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    return_value = models.JSONField(null=True, blank=True)
    # One dict per failed attempt: exception_class_path, message, traceback,
    # attempt, worker_id, occurred_at.
    errors = models.JSONField(default=list, blank=True)
    # One entry per attempt, as Django's TaskResult.worker_ids.
    worker_ids = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    max_attempts = models.PositiveIntegerField(default=1, db_default=1)
    progress = models.JSONField(null=True, blank=True)

    enqueued_at = models.DateTimeField(_("enqueued"))
    # What the caller asked for (Django's run_after); None means "as soon as possible".
    run_after = models.DateTimeField(null=True, blank=True)
    # When the job may next be claimed: run_after, enqueued_at, or a retry's time.
    available_at = models.DateTimeField()
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    # The worker that holds (CLAIMED or RUNNING) or last held the job. Not a foreign key: the
    # claim path stays one statement and worker rows can be pruned independently.
    worker_id = models.CharField(max_length=100, blank=True, default="", db_default="")
    # The token of the claim that holds the job (fresh for every claim; "" when nobody
    # holds it). Every write about a held job matches it, so a worker that lost the
    # job -- declared dead, its jobs rescued, perhaps claimed again -- changes nothing.
    lease = models.CharField(max_length=32, blank=True, default="", db_default="")
    # Workflows (chain, group, chord): the id shared by every job of one canvas; how
    # many jobs this one still waits for (status WAITING until 0); and its plumbing:
    # {"dependents": [ids to advance when it ends], "inputs": the ids (a nested list
    # for groups) whose results it receives, "mode": "value" (prepended to its args)
    # or "none" (immutable), "countdown": seconds, "errbacks": [signatures]}.
    workflow_id = models.UUIDField(null=True, blank=True)
    waiting_on = models.PositiveIntegerField(default=0, db_default=0)
    links = models.JSONField(null=True, blank=True)
    # Set once cancelling was asked for (None: never): the error entry the job ends with
    # (``django_tasks.exceptions.Cancelled``, when and by whom). A job that was READY or
    # WAITING is CANCELLED at once; a held one keeps running until its worker notices,
    # and whatever outcome its attempt then has is written as CANCELLED. In the row, so
    # it survives worker restarts.
    cancellation = models.JSONField(null=True, blank=True)
    # A unique job's key ("" for an ordinary job): while a job with this key is ready,
    # scheduled, claimed or running, enqueueing it again returns that job (see
    # ``django_tasks_job_unique`` below and docs/calling-tasks.md).
    unique_key = models.CharField(_("unique key"), max_length=255, blank=True, default="",
                                  db_default="")
    # Celery's ``expires``: a job not started by then is CANCELLED (error ``Expired``)
    # when a worker takes it, instead of running. None: never expires.
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    # The last time an operator retried this FAILED job: {"by": who, "at": when, "after":
    # the attempts it had}; None if never (``JobStore.retry_failed``).
    retried = models.JSONField(null=True, blank=True)
    #: Headers carried from the enqueue to the worker (``{"traceparent": ...}``: the
    #: OpenTelemetry trace context of the code that enqueued, docs/observability.md);
    #: NULL when there is nothing to carry. Users may add their own keys.
    headers = models.JSONField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        indexes = [
            # A claim walks each queue it serves in claim order (highest priority, then
            # oldest) and merges the heads, so it reads ~LIMIT rows per queue whatever
            # other queues hold: a (-priority, available_at) index made a dedicated
            # queue's claim walk every ready row of the others (77 jobs/s instead of
            # 3,650 with 1,000,000 jobs in another queue).
            models.Index(
                fields=["backend", "queue_name", "-priority", "available_at"],
                condition=Q(status=READY),
                name="django_tasks_job_claim_q",
            ),
            # Rescue: what a (dead) worker is holding. Keyed on the lease (a held job has
            # one, nothing else does) rather than the status, so that the hot path's writes,
            # which match status and lease by primary key, are never planned through it:
            # its dead entries grow with every job done until VACUUM.
            models.Index(
                fields=["worker_id"], condition=~Q(lease=""), name="django_tasks_job_held",
            ),
            # The cancel poll (every worker, twice a second): only jobs asked to cancel
            # enter it (the held-jobs index kept every entry a worker's claims and starts
            # left until VACUUM: 0.28 ms a poll after 5,000 jobs). CONCURRENTLY (0014).
            models.Index(
                fields=["worker_id"], condition=Q(cancellation__isnull=False) & ~Q(lease=""),
                name="django_tasks_job_cancelling",
            ),
            # Pruning: finished jobs by age. Partial, so enqueues and claims of jobs
            # that are not finished never touch it.
            models.Index(
                fields=["finished_at"], condition=Q(finished_at__isnull=False),
                name="django_tasks_job_finished_at",
            ),
            # The admin's job list, newest first (its default order and date drill-down).
            models.Index(fields=["-enqueued_at"], name="django_tasks_job_enqueued"),
            # The admin's task filter and search: the distinct task paths by a loose index
            # scan, and one task's jobs newest first (both 5 s+ at 2,000,000 jobs without
            # it; benchmarks/admin_pages.py). Built CONCURRENTLY on PostgreSQL (0008).
            models.Index(fields=["task_path", "enqueued_at"], name="django_tasks_job_task"),
            # The admin's "status = FAILED" (or CANCELLED) filter, newest first and its
            # count, however rare such jobs are among millions. Partial: only jobs that
            # end that way enter it, so the hot path never writes to it.
            models.Index(fields=["status", "enqueued_at"],
                         condition=Q(status__in=[FAILED, CANCELLED]),
                         name="django_tasks_job_failed"),
            # The admin's "other jobs of this workflow"; only workflow jobs are in it.
            models.Index(fields=["workflow_id"], condition=Q(workflow_id__isnull=False),
                         name="django_tasks_job_workflow"),
            # The admin's worker filter and a worker's page: the jobs a worker ran, newest
            # first. Partial: a job enters it when first claimed (never at enqueue).
            models.Index(fields=["worker_id", "enqueued_at"], condition=~Q(worker_id=""),
                         name="django_tasks_job_worker"),
            # The dashboard's "waiting" per queue (workflow steps waiting for their
            # inputs); only such steps enter it. Built CONCURRENTLY on PostgreSQL (0009).
            models.Index(fields=["backend", "queue_name"], condition=Q(status=WAITING),
                         name="django_tasks_job_waiting"),
            # Unique jobs of every status by key: the ``unique_for`` look-up of finished
            # ones, and the admin's search. Partial: ordinary jobs never enter it.
            models.Index(fields=["backend", "unique_key"], condition=~Q(unique_key=""),
                         name="django_tasks_job_unique_key"),
        ]
        constraints = [
            # Unique jobs: one active job per (backend, key), enforced by the database, so
            # racing enqueues create one job (the others' INSERT ... ON CONFLICT DO NOTHING
            # inserts nothing and they return the winner). Over the statuses a job has
            # until it finishes: rescue and retries move a job between them (READY again)
            # without ever leaving the index, so they keep the key; a finished job frees
            # it. Partial, so ordinary jobs never enter it.
            models.UniqueConstraint(
                fields=["backend", "unique_key"],
                condition=Q(status__in=ACTIVE) & ~Q(unique_key=""),
                name="django_tasks_job_unique",
            ),
        ]
        permissions = [("retry_job", "Can retry failed jobs"),
                       ("cancel_job", "Can cancel jobs")]

    def __str__(self) -> str:
        return f"{self.task_path} [{self.id}]"

    @property
    def duration(self) -> timedelta | None:
        """How long the last attempt ran, once finished."""
        if self.finished_at and self.last_attempted_at:
            return self.finished_at - self.last_attempted_at
        return None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


class WorkerQuerySet(models.QuerySet):
    def running(self) -> WorkerQuerySet:
        """Workers that have not stopped and were not declared dead (yet)."""
        return self.filter(stopped_at__isnull=True)

    def expired(self, now: datetime, timeout: float) -> WorkerQuerySet:
        """Running workers silent for more than ``timeout`` seconds: dead, not yet declared."""
        return self.running().filter(last_heartbeat_at__lt=now - timedelta(seconds=timeout))

    def prunable(self, before: datetime, *, now: datetime, timeout: float) -> WorkerQuerySet:
        """Workers not heard from since before ``before`` (stopped, declared dead, or
        silent) whose rows may go. Never a live one: a running worker that heart-beat
        within ``timeout`` seconds of ``now`` keeps its row whatever ``before`` says
        (deleted, it would take itself for declared dead). Nor one that still holds jobs:
        its row stays until they are rescued."""
        held = Job.objects.using(self.db).held().values("worker_id")
        live = models.Q(stopped_at__isnull=True,
                        last_heartbeat_at__gte=now - timedelta(seconds=timeout))
        return self.filter(last_heartbeat_at__lt=before).exclude(live).exclude(id__in=held)

    def prune(self, before: datetime, *, now: datetime, timeout: float) -> int:
        """Delete the rows :meth:`prunable` selects; returns how many."""
        return self.prunable(before, now=now, timeout=timeout).delete()[0]


class Worker(models.Model):
    """A running (or dead) ``manage.py worker`` process group."""

    id = models.CharField(primary_key=True, max_length=100)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    backend = models.CharField(max_length=100, default="default")
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField()
    pool = models.CharField(max_length=20)
    started_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Identifies the process beyond hostname and pid (boot id, pid namespace, pid, process
    # start time), so a worker on the same host and in the same pid namespace can tell for
    # sure that this one is gone and rescue its jobs at once instead of after the timeout.
    process_key = models.CharField(max_length=200, blank=True, default="")
    # Why it stopped: "" while running, else e.g. "shutdown", "declared dead by <id>".
    stop_reason = models.CharField(max_length=200, blank=True, default="")
    # The worker's own counters, written by its heartbeat (no cost on the hot path):
    # outcomes written since it started, how many of them FAILED, and its resident
    # memory (the worker process and its pool children, bytes; 0 where unknown).
    processed = models.PositiveBigIntegerField(default=0, db_default=0)
    failed = models.PositiveBigIntegerField(default=0, db_default=0)
    memory = models.PositiveBigIntegerField(default=0, db_default=0)
    # Outages of its broker or database it has ridden out since it started (one per
    # outage, however long), and whether it is in one now (as of its last heartbeat).
    outages = models.PositiveIntegerField(default=0, db_default=0)
    in_outage = models.BooleanField(default=False, db_default=False)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        verbose_name = _("worker")

    def __str__(self) -> str:
        return self.id

    def state(self, now: datetime, timeout: float) -> str:
        """'alive', 'dead' (silent past ``timeout``, not yet declared) or 'stopped'."""
        if self.stopped_at is not None:
            return "stopped"
        if self.last_heartbeat_at < now - timedelta(seconds=timeout):
            return "dead"
        return "alive"


class ScheduleQuerySet(models.QuerySet):
    def active(self) -> ScheduleQuerySet:
        """Schedules that fire: enabled, and (if they came from settings) still there."""
        return self.filter(enabled=True, removed_at__isnull=True)

    def due(self, now: datetime) -> ScheduleQuerySet:
        """Active schedules whose next tick is at or before ``now``."""
        return self.active().filter(next_run_at__lte=now).order_by("next_run_at")


class Schedule(models.Model):
    """A periodic task: enqueue ``task_path`` at every tick of a cron or interval timing.

    Rows come from ``OPTIONS["SCHEDULE"]`` (synchronised when a scheduler starts) or
    from the admin. Which ticks were enqueued is in :class:`ScheduleTick`, whose unique
    ``(schedule, tick_at)`` makes each tick fire once however many schedulers run.
    """

    class Origin(models.TextChoices):
        SETTINGS = "settings", _("settings")
        ADMIN = "admin", _("admin")

    class CatchUp(models.TextChoices):
        SKIP = "skip", _("skip missed ticks")
        LATEST = "latest", _("run the latest missed tick once")
        ALL = "all", _("run every missed tick (at most 100)")

    backend = models.CharField(max_length=100, default="default")
    name = models.CharField(max_length=200)
    task_path = models.CharField(_("task"), max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue_name = models.CharField(_("queue"), max_length=100, blank=True, default="",
                                  help_text=_("Empty: the task's queue (or ROUTES)."))
    priority = models.SmallIntegerField(null=True, blank=True,
                                        help_text=_("Empty: the task's priority."))
    cron = models.CharField(
        max_length=200, blank=True, default="",
        help_text=_("Five fields: minute hour day-of-month month day-of-week, e.g. "
                    "'0 0 * * *'; or @hourly, @daily, @weekly, @monthly."))
    interval = models.FloatField(_("interval (seconds)"), null=True, blank=True,
                                 help_text=_("Instead of cron: every this many seconds."))
    timezone = models.CharField(
        max_length=64, blank=True, default="",
        help_text=_("Zone the cron fields are read in; empty: settings.TIME_ZONE."))
    catch_up = models.CharField(max_length=10, choices=CatchUp.choices, default=CatchUp.SKIP)
    enabled = models.BooleanField(default=True)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.ADMIN,
                              editable=False)
    # Settings entries: a digest of the entry as last synchronised, so an entry changed
    # in settings overwrites the row, and an unchanged one leaves admin edits alone.
    settings_digest = models.CharField(max_length=64, blank=True, default="", editable=False)
    # When the entry disappeared from the settings (it no longer fires), else None.
    removed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Every tick up to here has been decided (enqueued or skipped); only moves forward.
    checked_until = models.DateTimeField(editable=False)
    next_run_at = models.DateTimeField(_("next run"), null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField(_("last run"), null=True, blank=True, editable=False)
    last_job_id = models.UUIDField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        verbose_name = _("schedule")
        constraints = [
            models.UniqueConstraint(fields=["backend", "name"],
                                    name="django_tasks_schedule_name"),
            models.CheckConstraint(
                condition=(Q(cron="") & Q(interval__isnull=False) & Q(interval__gt=0))
                | (~Q(cron="") & Q(interval__isnull=True)),
                name="django_tasks_schedule_one_timing",
                violation_error_message=_("Give either a cron expression or an interval."),
            ),
        ]
        indexes = [
            models.Index(fields=["next_run_at"], condition=Q(enabled=True),
                         name="django_tasks_schedule_due"),
        ]
        permissions = [("run_schedule", "Can run a schedule's task now")]

    def __str__(self) -> str:
        return self.name

    def timing(self) -> Any:
        """The ``schedules.crontab`` or ``schedules.Interval`` of this row."""
        from .schedules import Interval, crontab

        if self.cron:
            return crontab.from_string(self.cron)
        return Interval(self.interval or 0)

    def zone(self) -> tzinfo:
        """The zone cron fields are read in."""
        from zoneinfo import ZoneInfo

        from django.conf import settings

        return ZoneInfo(self.timezone or settings.TIME_ZONE or "UTC")

    def next_after(self, when: datetime) -> datetime:
        return self.timing().next_after(when, self.zone())

    def restart_at(self, now: datetime) -> None:
        """A new timing, or enabled again: ticks count from ``now``, none before it."""
        self.checked_until = now
        self.next_run_at = self.next_after(now)

    @property
    def state(self) -> str:
        if self.removed_at is not None:
            return "removed from settings"
        return "enabled" if self.enabled else "disabled"

    def describe(self) -> str:
        try:
            return self.timing().describe() + (f" ({self.timezone})" if self.cron and
                                               self.timezone else "")
        except ValueError:
            return f"invalid: {self.cron or self.interval}"

    def clean(self) -> None:
        from django.conf import settings
        from django.core.exceptions import ValidationError

        from .conf import is_zone

        errors: dict[str, str] = {}
        if self.cron and self.interval is not None:
            errors["interval"] = _("Give either a cron expression or an interval, not both.")
        elif not self.cron and self.interval is None:
            errors["cron"] = _("Give a cron expression or an interval.")
        elif self.interval is not None and self.interval <= 0:
            errors["interval"] = _("The interval must be more than 0 seconds.")
        elif self.cron:
            try:
                self.timing()
            except ValueError as exc:
                errors["cron"] = str(exc)
        if self.backend not in getattr(settings, "TASKS", {}):
            errors["backend"] = _("Not a backend alias of the TASKS setting.")
        if self.timezone and not is_zone(self.timezone):
            errors["timezone"] = _("Not a time zone name such as 'Europe/Paris'.")
        if not isinstance(self.args, list):
            errors["args"] = _("A JSON list, e.g. [1, \"a\"].")
        if not isinstance(self.kwargs, dict):
            errors["kwargs"] = _("A JSON object, e.g. {\"key\": 1}.")
        if not errors and self.backend in getattr(settings, "TASKS", {}):
            # The same checks as OPTIONS["SCHEDULE"] entries get from manage.py check:
            # a typo here would otherwise show only as an error at every tick.
            from django.tasks import task_backends

            call_problem = getattr(task_backends[self.backend], "call_problem", None)
            problem = call_problem and call_problem(self.task_path, self.args, self.kwargs,
                                                    self.queue_name)
            if problem:
                errors["task_path"] = problem
        if errors:
            raise ValidationError(errors)


class ScheduleTickQuerySet(models.QuerySet):
    def prunable(self, before: datetime) -> ScheduleTickQuerySet:
        """Tick records from before ``before`` that no scheduler can need: ticks its
        schedule has decided (before its ``checked_until``), which no pass looks at again."""
        decided = self.filter(tick_at__lt=models.F("schedule__checked_until"))
        return decided.filter(tick_at__lt=before)

    def prune(self, before: datetime) -> int:
        """Delete the records :meth:`prunable` selects; returns how many."""
        return self.prunable(before).delete()[0]


class ScheduleTick(models.Model):
    """A tick of a schedule that was enqueued (or run by hand): one row per tick, ever.

    The unique ``(schedule, tick_at)`` is the exactly-once guarantee: a scheduler
    inserts the row in the transaction that enqueues the job, so of several schedulers
    racing for a tick one commits and the others enqueue nothing. Kept apart from the
    job table, so pruning jobs never makes a tick fire again.
    """

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    tick_at = models.DateTimeField()
    enqueued_at = models.DateTimeField()
    job_id = models.UUIDField(null=True, blank=True, db_index=True)
    manual = models.BooleanField(default=False, help_text=_("Run by hand (the admin)."))
    error = models.TextField(blank=True, default="")

    objects = ScheduleTickQuerySet.as_manager()

    class Meta:
        verbose_name = _("schedule tick")
        constraints = [
            models.UniqueConstraint(fields=["schedule", "tick_at"],
                                    name="django_tasks_tick_once"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.tick_at.isoformat()}"


class RateLimit(models.Model):
    """The next free start slot of one rate-limited key of a backend (a task's dotted
    path, or ``queue:<name>``): what makes ``rate_limit`` hold across every worker
    (``django_tasks.rates``). Written by workers, one short statement per round trip
    that claimed limited jobs."""

    backend = models.CharField(max_length=100)
    key = models.CharField(max_length=255)
    #: Seconds since the epoch (the database's clock on PostgreSQL) of the next slot:
    #: a float, so both databases do the arithmetic in one portable statement.
    next_at = models.FloatField(default=0.0)
    #: How many slots the last reservation granted (read back by that reservation).
    last_granted = models.IntegerField(default=0)

    class Meta:
        db_table = "django_tasks_rate"
        verbose_name = _("rate limit")
        constraints = [
            models.UniqueConstraint(fields=["backend", "key"], name="django_tasks_rate_key"),
        ]

    def __str__(self) -> str:
        return f"{self.backend}: {self.key}"
class Counts(models.Model):
    """The columns :class:`Statistic` and :class:`Total` share: the key but for the
    minute, and the counts (``django_tasks.jobs.tally.COLUMNS``): how many, and run time
    and time-in-queue observations, sums (microseconds) and one column per histogram
    bucket (``RUN_COLUMNS``, ``WAIT_COLUMNS``, added below). Plain BIGINTs, without the
    CHECK (>= 0) of Positive fields: 37 checks per upsert for counters only the store
    writes."""

    id = models.BigAutoField(primary_key=True)
    backend = models.CharField(max_length=100)
    queue_name = models.CharField(max_length=100)
    task_path = models.CharField(max_length=255)
    n = models.BigIntegerField(default=0)
    run_n = models.BigIntegerField(default=0)
    run_us = models.BigIntegerField(default=0)
    wait_n = models.BigIntegerField(default=0)
    wait_us = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


# The bucket columns, one per bound: plain integers, so the upsert adds them one by one.
for _column in (*RUN_COLUMNS, *WAIT_COLUMNS):
    Counts.add_to_class(_column, models.BigIntegerField(default=0))


class StatisticQuerySet(models.QuerySet):
    def prunable(self, before: datetime) -> StatisticQuerySet:
        return self.filter(minute__lt=before)

    def prune(self, before: datetime) -> int:
        """Delete the minutes before ``before``; returns how many rows."""
        return self.prunable(before).delete()[0]


class Statistic(Counts):
    """What finished in one minute, per backend, queue, task and outcome: a count, and
    run time and time-in-queue sums and histograms (``django_tasks.histograms``).

    Counts only outcomes that were written, as written; added by upserts to the
    minute's row (``INSERT ... ON CONFLICT ... DO UPDATE SET n = n + excluded.n``): a
    worker adds what its round trips wrote about once a second
    (:class:`django_tasks.jobs.tally.Tally`), other outcome writes count in their own
    transaction. ``outcome`` is the status the outcome wrote: SUCCESSFUL, FAILED, READY (a
    retry), CANCELLED. Time in queue is from when the job was due (``available_at``) to
    the start of the attempt; run time is the attempt's. Observations of either are
    counted in ``run_n``/``wait_n`` (a job cancelled before it ran has neither); sums are
    in microseconds. Pruned by age (``STATS_RETENTION``).
    """

    minute = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=JobStatus.choices)

    objects = StatisticQuerySet.as_manager()

    class Meta:
        db_table = "django_tasks_minute"
        verbose_name = _("statistic")
        constraints = [
            # The upsert's conflict target; its leading minute also serves the charts'
            # and pruning's range scans.
            models.UniqueConstraint(
                fields=["minute", "backend", "queue_name", "task_path", "outcome"],
                name="django_tasks_minute_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.queue_name} {self.task_path} {self.outcome}"


class Total(Counts):
    """Running totals since the first outcome, per backend, queue, task and outcome: the
    columns of :class:`Statistic` without the minute. What ``/metrics`` serves as
    Prometheus counters (docs/observability.md).

    Written with the statistics, by the same upserts, in the same transactions (never by
    the roll-ups, which only merge minutes), and never pruned: a counter here only goes
    up, however the minutes are rolled up or deleted. ``outcome`` is a status written
    (SUCCESSFUL, FAILED, READY for a retry, CANCELLED) or one of two counts kept only
    here: ``ENQUEUED`` (jobs stored, counted after their transaction commits) and
    ``RESCUED`` (started attempts of lost workers' jobs, also counted as READY or FAILED).
    One row per key: reading every counter is a scan of a few hundred rows.
    """

    outcome = models.CharField(max_length=10)

    class Meta:
        db_table = "django_tasks_total"
        verbose_name = _("total")
        constraints = [
            models.UniqueConstraint(fields=["backend", "queue_name", "task_path", "outcome"],
                                    name="django_tasks_total_key"),
        ]

    def __str__(self) -> str:
        return f"{self.backend} {self.queue_name} {self.task_path} {self.outcome}: {self.n}"


class Dashboard(Statistic):
    """The admin's dashboard (``/admin/django_tasks/dashboard/``): the statistics seen
    with the queues, workers and schedules. A proxy, so the dashboard has an admin URL,
    and a place on the admin index, of its own; seeing it takes the view permission on
    jobs (``django_tasks.admin.dashboard``)."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
