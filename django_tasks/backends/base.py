"""What every django_tasks backend shares, and the broker interface the worker drives.

A backend (what ``TASKS[alias]["BACKEND"]`` names) has two parts:

- a :class:`~django_tasks.jobs.store.JobStore`: the job rows and the worker registry, the
  same for every broker (results, attempts, errors, progress, leases, rescue);
- a :class:`Broker`: what carries messages (publish, claim, give back, recover a lost
  worker's messages, wake idle workers). The worker depends on this interface alone;
  capability flags (``supports_*``) say what a broker can do, as Django's
  ``BaseTaskBackend`` does for backends.

A broker is built from the store and its own typed options (:meth:`Broker.options_from`
reads them from the backend, once), never the whole backend. It owns transport only:
every statement on job rows, the claim included, is the store's (a broker that carries
ids hands them to :meth:`JobStore.exchange <django_tasks.jobs.store.JobStore.exchange>`
as ``ByIds``; the database broker asks it for ``ByQueues``). A broker may implement
:meth:`Broker.exchange` (the worker's one verb per round trip) in one store call as an
optimisation (both do), but never with a different contract.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections, transaction
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone

from ..conf import BackendOptions
from ..exceptions import TaskNotRegistered
from ..jobs.messages import Exchanged, Message, NewJob, Outcome, Start, stale_of
from ..jobs.policy import resolve_task, send_robust, stand_in_task
from ..jobs.store import JobStore
from ..results import JobResult
from ..serialization import check_arguments
from ..states import READY
from ..task import Task
from .enqueue import Enqueueing

__all__ = ["Broker", "BrokerOptions", "Exchanged", "ModelBackend", "database_tag", "epoch_ms",
           "resolve_task", "stale_of"]


def database_tag(database: str) -> str:
    """8 hex digits naming the job table's database (engine, host, port, name): what a
    broker's default key or queue prefix ends with, so two projects (or a test run
    and a deploy) sharing one broker server never read each other's messages."""
    import hashlib

    db = settings.DATABASES.get(database, {})
    name = "|".join(str(db.get(k) or "") for k in ("ENGINE", "HOST", "PORT", "NAME"))
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def epoch_ms(value: datetime | None) -> int:
    """Epoch milliseconds of an aware datetime (0 for None: "now", by the broker's clock)."""
    return 0 if value is None else int(value.timestamp() * 1000)

@dataclass(frozen=True)
class BrokerOptions:
    """What a broker reads of its backend's configuration: its own options type
    subclasses this one (:meth:`Broker.options_from` builds it)."""

    #: The backend's alias (``TASKS[alias]``), for messages and its rows' ``backend``.
    alias: str


class Broker(ABC):
    """Carries jobs from producers to workers; the job rows stay in the store.

    Every verb states its guarantee. Errors listed in ``outage_errors`` mean the broker
    or the database is unreachable: the worker keeps what it has and retries. Any
    other exception is a bug, and stops the worker (its jobs are then rescued).
    """

    #: ``publish`` writes the message in the caller's transaction: a rollback
    #: publishes nothing, a commit makes the job claimable, with no window between.
    supports_transactional_publish: bool = False
    #: ``wake_source`` returns something that wakes idle workers (else they poll).
    supports_wakeup: bool = False
    #: Exceptions that mean an outage rather than a bug.
    outage_errors: tuple[type[BaseException], ...] = (DatabaseError,)
    #: ``OPTIONS`` keys of this broker's own, beside the ones every backend reads.
    option_names: frozenset[str] = frozenset()

    def __init__(self, store: JobStore, options: BrokerOptions) -> None:
        self.store = store
        self.options = options
        self.alias = options.alias

    @classmethod
    def options_from(cls, backend: ModelBackend) -> BrokerOptions:
        """This broker's options, read from ``backend`` (its configuration and OPTIONS)."""
        return BrokerOptions(alias=backend.alias)

    @abstractmethod
    def publish(self, job: Any) -> bool:
        """Store ``job`` (a ``NewJob``, checked already) in the caller's transaction on the store's
        database; it becomes claimable once that commits, exactly once.

        A unique job (``job.unique_key``) whose key an active job holds is neither
        stored nor published: returns False, and the caller's transaction is unharmed
        (:meth:`JobStore.insert`). Otherwise returns True.
        """

    def publish_many(self, jobs: Sequence[NewJob], *,
                     meanwhile: Iterator[None] | None = None) -> set[str] | None:
        """Store new jobs (``NewJob``, checked already) in the caller's transaction on the
        store's database, one statement per batch (:meth:`JobStore.insert_many
        <django_tasks.jobs.store.JobStore.insert_many>`); those READY become claimable
        once that commits, exactly once (a WAITING workflow step, when it is released).

        As :meth:`publish` for each job, unique ones included: if any job is unique,
        returns the ids stored (a job whose key an active job holds is not); None when
        every job was stored. Here the rows, then :meth:`republish` of the READY ones:
        a broker overrides it to publish the batch in one go (one NOTIFY, one pipelined
        Redis call, one RabbitMQ confirm window). ``meanwhile``: the caller's work in
        steps, for :meth:`JobStore.insert_many` to run while the database works.
        """
        inserted = self.store.insert_many(jobs, meanwhile=meanwhile)
        self.republish([str(j.id) for j in jobs if j.status == READY
                        and (inserted is None or str(j.id) in inserted)])
        return inserted

    @abstractmethod
    def claim(self, worker_id: str, lease: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[Message]:
        """Atomically take up to ``limit`` ready jobs of ``queues`` (highest priority, then
        oldest) under ``lease``; nobody else can claim them until they are finished,
        given back or rescued."""

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), queues: Sequence[str] = (),
                 limit: int = 0, now: datetime | None = None) -> Exchanged:
        """The worker's round trip: record ``starts``, write ``outcomes`` (with the outcome
        hooks, in their transaction), then claim up to ``limit`` jobs under ``lease``.

        Each part is fenced by leases: a start or outcome whose lease no longer holds
        its job changes nothing and comes back in ``stale``. If it raises, nothing the
        worker must remember was lost: starts and outcomes may be sent again (a replay
        is harmless, the leases see to it).
        """
        self.store.record_starts(worker_id, starts)
        applied = self.store.apply_outcomes(worker_id, outcomes)
        claimed = self.claim(worker_id, lease, queues, limit, now) if limit > 0 else []
        return Exchanged(claimed, applied, stale_of(outcomes, applied))

    def give_back(self, messages: Sequence[Message]) -> int:
        """Claimed jobs that never started become claimable again, untouched."""
        return self.store.give_back(messages)

    def republish(self, job_ids: Sequence[str]) -> None:
        """Jobs the store made READY again (an operator's retry) become claimable, and
        workers serving their queues are woken, once the caller's transaction commits."""
        return None

    def recover(self, worker_id: str) -> None:
        """Make the messages a lost worker held claimable again (its rows were rescued)."""
        return None

    def duties(self, queues: Sequence[str]) -> list[tuple[str, float, Callable[..., None]]]:
        """Periodic duties a worker serving ``queues`` runs for this broker, as
        ``(name, interval in seconds, run(now))``; ``now`` is None outside tests."""
        return []

    def ping(self) -> None:
        """Raise one of ``outage_errors`` now if the broker cannot be reached (a worker
        asks before it starts)."""
        return None

    def unreachable(self, exc: BaseException) -> str:
        """What is unreachable, for an operator reading ``exc``."""
        return "the database is unreachable"

    def wake_source(self, queues: Sequence[str]) -> Any | None:
        """A waitable (``fileno()``, ``drain()``, ``close()``) that becomes readable when
        jobs of ``queues`` are published, or None: the worker polls.

        A source that takes jobs itself (the Redis broker's) also has ``arm(holder)``,
        called before the worker sleeps with a free slot and no job in sight (it then
        becomes readable once it took one, for ``holder``), and ``disarm()``, called
        when the worker stops claiming (it returns once what it took meanwhile was
        handed over or given back)."""
        return None

    def configure_consumer(self, capacity: int) -> None:
        """A worker will hold at most ``capacity`` jobs (its slots and buffer): a broker
        that pushes messages sizes what it sends ahead to that (called before
        :meth:`wake_source`)."""
        return None

    def prepare_connection(self) -> None:
        """Prepare the calling thread's connections for a worker's broker traffic (the
        broker thread calls it on its own connection, and again after reconnecting)."""
        self.store.engine.prepare_worker_connection()

    def check(self) -> list[checks.CheckMessage]:
        """Problems with this broker's configuration, for ``manage.py check``."""
        return []

    def status(self) -> list[str]:
        """Lines for ``manage.py tasks status`` about what the broker holds beyond the
        job rows (none for the database broker: the rows are all there is). Never
        raises for an unreachable broker: it says so."""
        return []


class ModelBackend(Enqueueing, BaseTaskBackend):
    """Results in the ``Job`` model (``self.store``); ``broker_class`` carries the messages."""

    broker_class: type[Broker]

    task_class = Task
    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True
    #: Tasks may be unique (``unique``, ``unique_key``, ``unique_for``): one active job
    #: per key, kept by a unique index of the job table.
    supports_unique = True
    #: Chains, groups and chords (:mod:`django_tasks.workflows`) run on this backend.
    supports_workflows = True
    #: Tasks may be atomic (``atomic=True``): their writes commit with their outcome.
    supports_atomic = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.config = BackendOptions.parse(self.options, self.broker_class.option_names)
        self.database = self.config.database
        self.store = JobStore(alias, self.database, worker_timeout=self.config.worker_timeout)
        self.store.engine.prepared = self.config.prepared_statements
        self.store.asynchronous_commit = self.config.asynchronous_commit
        self.broker = self.broker_class(self.store, self.broker_class.options_from(self))
        # What the store's follow-ups (a workflow's next step) publish through.
        self.store.republish = self.broker.republish

    # -- producing: the Enqueueing mixin (backends/enqueue.py) -------------------

    def report_progress(self, job_id: str, progress: dict[str, Any], lease: str = "") -> bool:
        """Store the latest progress report of a held job (last write wins).

        Inside a worker ``lease`` fences it: a report from an attempt that lost the job
        changes nothing. Returns whether it was stored.
        """
        check_arguments(None, (), progress, task_name="progress")
        progress["updated_at"] = timezone.now().isoformat()
        return self.store.report_progress(job_id, progress, lease)

    def cancel(self, job_ids: Sequence[Any], *, by: str = "",
               terminate: bool = False) -> dict[str, str]:
        """Cancel these jobs; what became of each id (see :meth:`JobStore.cancel`).

        A job that had not started is CANCELLED at once, in this call's transaction
        (with its workflow's follow-ups); one a worker holds is marked, and its worker
        stops it: once the task sees ``context.is_cancelled()``, or when its
        ``cancel_grace`` is over (prefork), or, with ``terminate`` (Celery's
        ``revoke(terminate=True)``), killed as soon as the worker notices (prefork; the
        threads pool can only ask). ``by`` (say, a user name) is recorded in the error entry.
        """
        return self.store.cancel(job_ids, by=by, terminate=terminate)

    def forget(self, job_id: Any) -> None:
        """Delete the row of this finished job (Celery's ``result.forget()``).
        ``ValueError`` if it has not finished (cancel it first);
        ``TaskResultDoesNotExist`` if there is no such job."""
        from ..models import Job

        try:
            pk = uuid.UUID(str(job_id))
        except ValueError:
            raise TaskResultDoesNotExist(job_id) from None
        jobs = Job.objects.using(self.database).filter(pk=pk, backend=self.alias)
        if jobs.finished().delete()[0]:
            return
        status = jobs.values_list("status", flat=True).first()
        if status is None:
            raise TaskResultDoesNotExist(job_id)
        raise ValueError(f"Job {job_id} is {status}: only a finished job can be forgotten "
                         "(cancel it first).")

    def retry(self, job_ids: Sequence[Any], *, by: str = "") -> list[str]:
        """Run these FAILED jobs once more (their errors kept); returns the ids retried.

        Goes through the broker like an enqueue, so workers wake up, and sends
        ``task_enqueued`` for each once committed. ``by`` (say, a user name) is
        recorded on each job retried.
        """
        from ..models import Job

        ids = self.store.retry_failed(job_ids, by=by)
        if ids:
            self.broker.republish(ids)
            for job in Job.objects.using(self.database).filter(pk__in=ids):
                result = self.result_from_job(job)
                transaction.on_commit(
                    lambda r=result: send_robust(task_enqueued, self.alias, r),
                    using=self.database, robust=True,
                )
        return ids

    # -- results -----------------------------------------------------------------

    def get_result(self, result_id: str) -> JobResult:
        from ..models import Job

        try:
            job = Job.objects.using(self.database).get(pk=uuid.UUID(str(result_id)))
        except (ValueError, Job.DoesNotExist):
            raise TaskResultDoesNotExist(result_id) from None
        return self.result_from_job(job)

    def result_from_job(self, job: Any) -> JobResult:
        """The result of a job row; a job whose task no longer resolves (renamed or
        removed in a deploy) still reads, under a stand-in task of the same path."""
        try:
            task = resolve_task(job.task_path)
        except TaskNotRegistered as exc:
            task = stand_in_task(job.task_path, self.alias, str(exc))
        if (task.queue_name, task.priority, task.run_after, task.backend) != (
            job.queue_name, job.priority, job.run_after, job.backend
        ):
            task = replace(
                task,
                queue_name=job.queue_name,
                priority=job.priority,
                run_after=job.run_after,
                backend=job.backend,
            )
        return JobResult.build(
            task, id=str(job.id), job_status=job.status, enqueued_at=job.enqueued_at,
            started_at=job.started_at, finished_at=job.finished_at,
            last_attempted_at=job.last_attempted_at, args=job.args, kwargs=job.kwargs,
            backend=job.backend, errors=job.errors, worker_ids=job.worker_ids,
            progress=job.progress, return_value=job.return_value,
        )

    # -- configuration -----------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        from ..beat.scheduler import check_schedules

        errors: list[checks.CheckMessage] = list(self.broker.check())
        if self.config.schedule:
            errors.extend(check_schedules(self))
        where = f"TASKS[{self.alias!r}]"
        for problem in self.config.problems:
            errors.append(checks.Error(f"{where}: {problem}.", id="django_tasks.E001"))
        if self.database not in connections.settings:
            errors.append(
                checks.Error(
                    f"{where}: OPTIONS['DATABASE'] is {self.database!r}, which is not in "
                    "DATABASES.",
                    id="django_tasks.E002",
                )
            )
        elif (self.config.asynchronous_commit
              and not self.store.engine.commits_without_disk_wait):
            errors.append(
                checks.Warning(
                    f"{where}: OPTIONS['ASYNCHRONOUS_COMMIT'] has no effect on "
                    f"{connections[self.database].display_name}: enqueues commit as they "
                    "would without it.",
                    hint="It is for PostgreSQL; remove it, or store jobs on PostgreSQL.",
                    id="django_tasks.W002",
                )
            )
        for pattern, queue in self.config.routes.items():
            if self.queues and queue not in self.queues:
                errors.append(
                    checks.Error(
                        f"{where}: ROUTES sends {pattern!r} to queue {queue!r}, which is not "
                        "in QUEUES.",
                        hint=f"Add {queue!r} to QUEUES or change the route.",
                        id="django_tasks.E003",
                    )
                )
        from django.apps import apps

        if not apps.is_installed("django_tasks"):
            errors.append(
                checks.Error(
                    f"{where} uses {type(self).__name__}, which stores jobs in the "
                    "django_tasks app's models, but 'django_tasks' is not in INSTALLED_APPS.",
                    hint="Add 'django_tasks' to INSTALLED_APPS.",
                    id="django_tasks.E004",
                )
            )
        return errors
