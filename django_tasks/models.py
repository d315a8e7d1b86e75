"""Where jobs and workers live. Only backends and the admin touch these directly."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .ids import uuid7
from .states import FAILED, FINISHED, HELD, READY, RUNNING, JobStatus

__all__ = ["Job", "Worker"]


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

    def prune(self, before: datetime, *, batch_size: int = 1000) -> int:
        """Delete finished jobs that finished before ``before``, in batches; returns how many."""
        total = 0
        while True:
            ids = list(
                self.finished().filter(finished_at__lt=before).values_list("pk", flat=True)[
                    :batch_size
                ]
            )
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
            # Pruning: finished jobs by age. Partial, so enqueues and claims of jobs
            # that are not finished never touch it.
            models.Index(
                fields=["finished_at"], condition=Q(finished_at__isnull=False),
                name="django_tasks_job_finished_at",
            ),
            models.Index(fields=["-enqueued_at"], name="django_tasks_job_enqueued"),
        ]
        permissions = [("retry_job", "Can retry failed jobs")]

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

    def prune(self, before: datetime) -> int:
        """Delete the rows of workers not heard from since before ``before`` (stopped,
        declared dead, or silent); returns how many. A worker that still holds jobs keeps
        its row until they are rescued."""
        held = Job.objects.using(self.db).held().values("worker_id")
        return self.filter(last_heartbeat_at__lt=before).exclude(id__in=held).delete()[0]


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
