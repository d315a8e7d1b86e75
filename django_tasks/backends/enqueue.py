"""Enqueueing: every check and every write of an enqueue, one job or many.

:class:`Enqueueing` is the producing half of :class:`~django_tasks.backends.base.ModelBackend`
(a mixin: the backend's results, operator verbs and configuration are in ``base.py``).
Where a job is enqueued: :meth:`Enqueueing.enqueue` (one) and
:meth:`Enqueueing.enqueue_many` (many: ``Task.enqueue_many``, ``django_tasks.enqueue_many``,
workflows, a schedule's catch-up). Both check every call first with the one set of checks
(:meth:`Enqueueing.check_task` once per task, :meth:`Enqueueing.check_args` per call), then
write through the broker: ``Broker.publish`` (one INSERT) or ``Broker.publish_many`` (one
INSERT per :data:`~django_tasks.jobs.store.BATCH_SIZE` jobs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.tasks import Task as DjangoTask
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.utils import timezone

from ..conf import BackendOptions
from ..exceptions import EnqueueError
from ..ids import uuid7_strs
from ..jobs.enqueued import COUNTER as ENQUEUED
from ..jobs.messages import NewJob
from ..jobs.policy import heard, resolve_task, send_robust
from ..jobs.store import BATCH_SIZE, JobStore
from ..observe import tracing
from ..observe.headers import for_job as headers_for
from ..results import JobResult
from ..serialization import (
    check_arguments,
    check_payload,
    check_signature,
    dumps_checked,
    normalized,
)
from ..states import READY
from ..task import for_django_checks

if TYPE_CHECKING:
    from .base import Broker

__all__ = ["UNIQUE_TRIES", "Enqueueing"]

#: ``headers`` of :meth:`Enqueueing._new_job`: made for each job (tracing is on).
_PER_JOB = object()


class _Plan:
    """What the calls of one task share, looked up once per task in a bulk enqueue
    instead of once per call (a ``module_path`` alone is an f-string each time)."""

    __slots__ = ("expires", "max_attempts", "path", "priority", "queue", "receives_input",
                 "run_after", "shapes", "task", "unique")

    def __init__(self, task: DjangoTask, queue: str, receives_input: bool = False) -> None:
        self.task = task
        self.queue = queue
        self.receives_input = receives_input
        self.path = task.module_path
        self.priority = task.priority
        self.run_after = task.run_after
        self.max_attempts = getattr(task, "max_attempts", 1)
        self.expires = getattr(task, "expires", None) is not None
        self.unique = getattr(task, "is_unique", False)
        #: The shapes of call (how many positional arguments, which named) whose fit to
        #: the signature was checked: it depends on nothing else.
        self.shapes: set[Any] = set()


#: Conflicting INSERTs of a unique job whose holder then finished, before giving up.
UNIQUE_TRIES = 5

#: Task objects whose plan (their task-level checks passed) a backend remembers for
#: single enqueues; past this many it forgets them all (``task.using()`` makes a new
#: task object per call).
PLANS_KEPT = 256
#: Bumped by any change of settings (tests): remembered plans are then forgotten, as
#: the checks they passed depend on INSTALLED_APPS and TASKS.
_settings_epoch = [0]


def _settings_changed(**kwargs: Any) -> None:
    _settings_epoch[0] += 1


setting_changed.connect(_settings_changed)


class Enqueueing:
    """The producing half of ``ModelBackend``: what it needs of the backend is below."""

    alias: str
    queues: Any
    config: BackendOptions
    database: str
    store: JobStore
    broker: Broker
    result_from_job: Callable[[Any], JobResult]

    def validate_task(self, task: DjangoTask) -> None:
        """Django's checks, except that a ``bind=True`` task's first parameter (the
        context) may have any name: Celery's code calls it ``self``."""
        super().validate_task(for_django_checks(task))

    def queue_for(self, task: DjangoTask) -> str:
        """The queue a call goes to: the call's choice, else ROUTES, else the task's."""
        if not getattr(task, "queue_from_call", False):
            routed = self.config.route(task.module_path)
            if routed is not None:
                return routed
        return task.queue_name

    def enqueue(self, task: DjangoTask, args: Sequence[Any], kwargs: dict[str, Any]) -> JobResult:
        """Store a job for ``task`` with these arguments, or raise saying why not.

        Refused before anything is written: a backend whose app is not installed
        (``InvalidTaskBackend``), a task workers would not import (``InvalidTask``),
        arguments that do not fit the signature (``InvalidArguments``), are not strict
        JSON (``ArgumentNotSerializable``) or exceed ``MAX_PAYLOAD`` (``PayloadTooLarge``).
        """
        job = self.new_job(task, args, kwargs)
        holder = self.store_job(job, task)
        if holder is not None:  # the job holding the key: nothing enqueued, no signal
            return self.result_from_job(holder)
        return self.enqueued(task, job)

    def enqueue_many(
        self, calls: Iterable[tuple[DjangoTask, Sequence[Any], Mapping[str, Any]]],
    ) -> list[JobResult]:
        """Store one job per ``(task, args, kwargs)`` of ``calls``, as :meth:`enqueue`
        would one after the other, in a fraction of the time; their results, in order.

        Every call is checked before anything is written: one that :meth:`enqueue` would
        refuse raises the same exception, its message starting with the call's position
        (``Call 3: ...``), and nothing is stored. Then one INSERT per
        :data:`~django_tasks.jobs.store.BATCH_SIZE` jobs, in one transaction (a savepoint
        in yours): all are stored or none. Each task's options apply to its calls
        (``task.using(priority=..., run_after=..., queue_name=..., unique_key=...)``);
        every task must be of this backend. A unique call whose key an active job holds,
        or an earlier call of the batch took, returns that job and stores nothing (calls
        with ``unique_for`` are stored one at a time: each needs a look at finished
        jobs). ``task_enqueued`` is sent for each new job once your transaction commits.
        """
        calls = list(calls)
        jobs: list[NewJob] = []
        tasks: list[DjangoTask] = []
        plans: dict[int, _Plan] = {}
        ids = uuid7_strs(len(calls))
        # timezone.now() without its settings look-up per job; tracing asked once, not
        # per job (~1 us each): when it is off, every job has the same headers (yours,
        # or None).
        clock = partial(datetime.now, UTC) if settings.USE_TZ else datetime.now
        traced = tracing.enabled()
        headers = _PER_JOB if traced else headers_for(None, self.alias, traced=False)
        for n, call in enumerate(calls):
            try:
                task, args, kwargs = call
                plan = plans.get(id(task))
                if plan is None:
                    if getattr(task, "backend", self.alias) != self.alias:
                        raise InvalidTask(
                            f"{task.module_path} uses backend {task.backend!r}, not "
                            f"{self.alias!r}: the calls of one enqueue_many() share one."
                        )
                    plan = plans[id(task)] = self._plan_for(task, False)
                jobs.append(self._new_job(plan, args, kwargs, ids[n], clock(), headers))
                tasks.append(task)
            except Exception as exc:
                if exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"Call {n}: {exc.args[0]}", *exc.args[1:])
                raise
        return self.store_many(jobs, tasks)

    def store_many(self, jobs: Sequence[NewJob], tasks: Sequence[DjangoTask]) -> list[JobResult]:
        """Write new jobs (checked; ``tasks[i]`` is ``jobs[i]``'s) in one transaction through
        :meth:`Broker.publish_many`; their results, in order (for a unique job whose key
        was held, the holder's). ``task_enqueued`` follows the commit, for new jobs only.
        """
        results: list[JobResult | None] = [None] * len(jobs)
        batch: list[int] = []  # stored together
        alone: list[int] = []  # unique_for: stored one at a time
        same: list[tuple[int, int]] = []  # (a call, the earlier call of its key)
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            key = job.unique_key
            if key:
                if key in first:
                    same.append((i, first[key]))
                    continue
                first[key] = i
                if getattr(tasks[i], "unique_for", None):
                    alone.append(i)
                    continue
            batch.append(i)
        new: list[JobResult] = []
        simple = not (alone or first) and len(batch) <= BATCH_SIZE
        try:
            with nullcontext() if simple else transaction.atomic(using=self.database):
                # No unique job: each is stored (or none is), so their results are made
                # in steps while the database loads the rows (JobStore.insert_many).
                ahead = None if first else self._results_ahead(batch, jobs, tasks, results, new)
                inserted = self.broker.publish_many([jobs[i] for i in batch], meanwhile=ahead)
                if ahead is not None:
                    for _ in ahead:  # the steps the database did not run
                        pass
                else:
                    stored = [i for i in batch if inserted is None or jobs[i].id in inserted]
                    for i, result in zip(stored, self.results_for([tasks[i] for i in stored],
                                                                  [jobs[i] for i in stored]),
                                         strict=True):
                        results[i] = result
                        new.append(result)
                for i in batch:
                    if results[i] is not None:
                        continue
                    holder = self.store.unique_holder(jobs[i].unique_key)
                    if holder is not None:
                        results[i] = self.result_from_job(holder)
                    else:  # the holder finished meanwhile: the key may be free
                        alone.append(i)
                for i in alone:
                    holder = self.store_job(jobs[i], tasks[i])
                    if holder is not None:
                        results[i] = self.result_from_job(holder)
                    else:
                        results[i] = self.result_for(tasks[i], jobs[i])
                        new.append(results[i])
        except DatabaseError as exc:
            if isinstance(exc, EnqueueError):
                raise
            raise EnqueueError(f"Could not enqueue {len(jobs)} jobs: "
                               f"{type(exc).__name__}: {exc}".strip()) from exc
        for i, earlier in same:
            results[i] = results[earlier]
        self.announce(new)
        return results  # type: ignore[return-value]

    def _results_ahead(self, batch: Sequence[int], jobs: Sequence[NewJob],
                       tasks: Sequence[DjangoTask], results: list[Any],
                       new: list[JobResult]) -> Iterator[None]:
        """The results of ``batch`` (positions in ``jobs``) into ``results`` and ``new``,
        in order, :data:`BATCH_SIZE` a step."""
        for start in range(0, len(batch), BATCH_SIZE):
            part = batch[start:start + BATCH_SIZE]
            made = self.results_for([tasks[i] for i in part], [jobs[i] for i in part])
            for i, result in zip(part, made, strict=True):
                results[i] = result
            new.extend(made)
            yield

    def check_call(self, task: DjangoTask, args: Sequence[Any], kwargs: dict[str, Any], *,
                   receives_input: bool = False) -> str:
        """Every check a call must pass before it is stored; returns its queue.

        The one set of checks: :meth:`enqueue` makes them, and so do the schedules'
        system check and the admin's schedule form (:meth:`call_problem`). Raises
        ``InvalidTaskBackend``, ``InvalidTask``, ``InvalidArguments``,
        ``ArgumentNotSerializable`` or ``PayloadTooLarge``, saying why.
        ``receives_input``: a workflow step that will get its input (the previous
        step's result) as an extra first argument; the signature is checked with it.
        """
        queue_name = self.check_task(task)
        self.check_args(task, args, kwargs, receives_input=receives_input)
        return queue_name

    def check_task(self, task: DjangoTask) -> str:
        """The checks of :meth:`check_call` about the task alone (made once per task in a
        bulk enqueue); returns its queue."""
        from django.apps import apps
        from django.tasks.exceptions import InvalidTaskBackend

        from ..conf import may_import

        if not apps.is_installed("django_tasks"):
            raise InvalidTaskBackend(
                f"TASKS[{self.alias!r}] uses {type(self).__name__}, which stores jobs in the "
                "django_tasks app's models, but 'django_tasks' is not in INSTALLED_APPS: add "
                "it (and migrate). Nothing was enqueued."
            )
        self.validate_task(task)
        module = task.func.__module__
        if not may_import(module):
            raise InvalidTask(
                f"{task.module_path} is not in an installed app, so workers would not import "
                f"it: add its app to INSTALLED_APPS, or {module!r} to "
                f"TASKS[{self.alias!r}]['OPTIONS']['TASK_MODULES']. Nothing was enqueued."
            )
        queue_name = self.queue_for(task)
        if self.queues and queue_name not in self.queues:
            raise InvalidTask(
                f"ROUTES sends {task.module_path!r} to queue {queue_name!r}, which is not in "
                f"TASKS[{self.alias!r}]['QUEUES']."
            )
        return queue_name

    def check_args(self, task: DjangoTask, args: Sequence[Any], kwargs: dict[str, Any],
                   *, receives_input: bool = False) -> str:
        """The checks of :meth:`check_call` about the arguments (the signature, strict
        JSON, ``MAX_PAYLOAD``); returns ``[args, kwargs]`` as JSON text."""
        return self._check_args(_Plan(task, "", receives_input), args, kwargs)[0]

    def _check_args(self, plan: _Plan, args: Sequence[Any],
                    kwargs: Mapping[str, Any]) -> tuple[str, int]:
        """:meth:`check_args` with what the calls of one task share looked up once
        (``plan``); returns the JSON text and where ``args``' ends in it
        (``NewJob.call_split``). Whether arguments fit a signature depends only on how
        many are positional and which are named, so the signature is checked once per
        shape of call (``plan.shapes``); the values are checked every time."""
        task = plan.task
        shape: Any = len(args)
        if kwargs:
            shape = (shape, *kwargs)
        if shape not in plan.shapes:
            check_signature(task.func, [None, *args] if plan.receives_input else args,
                            kwargs, task_name=plan.path, takes_context=task.takes_context)
            plan.shapes.add(shape)
        check_arguments(task.func, args, kwargs, task_name=plan.path)
        # Each half encoded once, then joined as dumps([args, kwargs]) would write them.
        head = dumps_checked(args) if args else "[]"
        call = f"[{head},{dumps_checked(kwargs) if kwargs else '{}'}]"
        limit = self.config.max_payload
        if limit is not None and len(call) > limit:  # ASCII-escaped: never shorter
            check_payload(task.func, args, kwargs, limit, task_name=plan.path,
                          setting=f"TASKS[{self.alias!r}]['OPTIONS']['MAX_PAYLOAD']")
        return call, len(head) + 1

    def call_problem(self, task_path: str, args: Sequence[Any], kwargs: dict[str, Any],
                     queue: str = "") -> str | None:
        """Why a call of the task at ``task_path`` could not be enqueued, or None: the
        checks of :meth:`check_call`, made without enqueueing (a schedule's call, by the
        system check and the admin's schedule form)."""
        try:
            task = resolve_task(task_path)
            if queue:
                task = task.using(queue_name=queue)
            self.check_call(task, args, kwargs)
        except Exception as exc:
            return str(exc).removesuffix("Nothing was enqueued.").strip()
        return None

    def new_job(self, task: DjangoTask, args: Sequence[Any], kwargs: dict[str, Any], *,
                receives_input: bool = False, now: datetime | None = None,
                job_id: str | None = None, traced: bool = True) -> NewJob:
        """The :class:`NewJob` for a call that passes :meth:`check_call` (the task's own
        checks are remembered per task object: :meth:`_plan_for`). ``now``: its enqueue
        time; ``traced`` False: tracing is known off."""
        plan = self._plan_for(task, receives_input)
        return self._new_job(plan, args, kwargs, job_id or uuid7_strs(1)[0],
                             now or timezone.now(),
                             _PER_JOB if traced else headers_for(None, self.alias, traced=False))

    def _plan_for(self, task: DjangoTask, receives_input: bool) -> _Plan:
        """The plan of ``task`` once :meth:`check_task` passed, remembered per task
        object until settings change (``PLANS_KEPT``), so repeated single enqueues of a
        task check it, and the shape of its calls against the signature, once: 6-9 us
        of CPU less per ``enqueue()`` (alternating runs of 3,000, database broker). The
        task itself is kept with its plan: its id cannot be reused while cached."""
        plans = self.__dict__.get("_plans")
        if plans is None or plans[0] != _settings_epoch[0]:
            plans = self.__dict__["_plans"] = (_settings_epoch[0], {})
        key = (id(task), receives_input)
        plan = plans[1].get(key)
        if plan is None or plan.task is not task:
            plan = _Plan(task, self.check_task(task), receives_input)
            if len(plans[1]) >= PLANS_KEPT:
                plans[1].clear()
            plans[1][key] = plan
        return plan

    def _new_job(self, plan: _Plan, args: Sequence[Any], kwargs: Mapping[str, Any],
                 job_id: str, now: datetime, headers: Any) -> NewJob:
        """:meth:`new_job` with what the calls of one task share looked up once:
        ``plan``; ``headers``, the job's (:data:`_PER_JOB`: made for this job)."""
        call, split = self._check_args(plan, args, kwargs)
        task = plan.task
        # Copies, normal as Django's TaskResult keeps them (tuples become lists): the
        # results of a bulk enqueue share them (JobResult.copies).
        job = NewJob(job_id, plan.path, plan.queue, plan.priority,
                     [normalized(v) for v in args] if args else [],
                     {k: normalized(v) for k, v in kwargs.items()} if kwargs else {},
                     plan.max_attempts, now, plan.run_after, call=call, call_split=split)
        if plan.expires:
            job.expires_at = task.expires_at(now)
        if plan.unique:
            job.unique_key = task.unique_key_for(args, kwargs) or ""
        # Headers for the worker: the enqueuer's trace context, the user's own (or None).
        job.headers = headers_for(job, self.alias) if headers is _PER_JOB else headers
        return job

    def store_job(self, job: NewJob, task: DjangoTask) -> Any:
        """Write a new job (:meth:`new_job`): through the broker (claimable once the
        caller's transaction commits), or only as a row for a workflow step that waits.

        A unique job whose key another job holds is not stored: that job is returned
        (None otherwise).
        """
        holder = None
        try:
            if job.status != READY:
                self.store.insert(job)
            elif job.unique_key:
                holder = self._publish_unique(job, getattr(task, "unique_for", None),
                                              job.enqueued_at)
            else:
                self.broker.publish(job)
        except DatabaseError as exc:
            # One statement (INSERT, and NOTIFY on PostgreSQL) that failed: nothing was
            # stored, unless the connection broke after the commit was sent. Inside the
            # caller's transaction, that transaction is now unusable, as with any
            # database error.
            raise EnqueueError(
                f"Could not enqueue {task.module_path}: {type(exc).__name__}: {exc}".strip()
            ) from exc
        return holder

    def enqueued(self, task: DjangoTask, job: NewJob) -> JobResult:
        """The result for a stored job; ``task_enqueued`` is sent once the caller's
        transaction commits (never for a rolled-back one), at once outside one."""
        result = self.result_for(task, job)
        self.announce([result])
        return result

    def result_for(self, task: DjangoTask, job: NewJob) -> JobResult:
        """The result of a job just stored."""
        if job.queue_name != task.queue_name:
            task = replace(task, queue_name=job.queue_name)
        return JobResult.build(task, id=str(job.id), job_status=job.status,
                               enqueued_at=job.enqueued_at, args=list(job.args),
                               kwargs=job.kwargs, backend=self.alias)

    def results_for(self, tasks: Sequence[DjangoTask], jobs: Sequence[NewJob]) -> list[JobResult]:
        """:meth:`result_for` each of ``jobs`` (``tasks[i]`` is ``jobs[i]``'s), in order:
        built once per task and kind of job, copied for the others
        (:meth:`JobResult.copies <django_tasks.results.JobResult.copies>`)."""
        kinds: dict[tuple[Any, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            kind = (id(tasks[i]), job.queue_name, job.status)
            kinds.setdefault(kind, []).append(i)
        results: list[Any] = [None] * len(jobs)
        for same in kinds.values():
            first = results[same[0]] = self.result_for(tasks[same[0]], jobs[same[0]])
            others = first.copies([jobs[i] for i in same[1:]])
            for i, result in zip(same[1:], others, strict=True):
                results[i] = result
        return results

    def announce(self, results: Sequence[JobResult]) -> None:
        """Send ``task_enqueued`` for each of ``results`` once the caller's transaction
        commits (never for a rolled-back one), at once outside one: one on-commit
        callback however many, and none sent where nobody listens."""
        if results:
            transaction.on_commit(partial(self._send_enqueued, results),
                                  using=self.database, robust=True)

    def _send_enqueued(self, results: Sequence[JobResult]) -> None:
        """The stored jobs' transaction committed: count them (``/metrics``' enqueued
        counter, :mod:`django_tasks.jobs.enqueued`) and send ``task_enqueued``."""
        if len(results) == 1:  # an enqueue(): no grouping to do
            task = results[0].task
            ENQUEUED.add(self.database, self.alias, task.queue_name, task.module_path, 1)
            if heard(task_enqueued, type(self)):
                send_robust(task_enqueued, self.alias, results[0])
            return
        # By task object first: a bulk enqueue's results share a few (JobResult.copies).
        tasks = {id(r.task): r.task for r in results}
        counts: Counter[tuple[str, str]] = Counter()
        for key, n in Counter(map(id, map(attrgetter("task"), results))).items():
            counts[tasks[key].queue_name, tasks[key].module_path] += n
        for (queue, path), n in counts.items():
            ENQUEUED.add(self.database, self.alias, queue, path, n)
        if heard(task_enqueued, type(self)):
            for result in results:
                send_robust(task_enqueued, self.alias, result)

    def _publish_unique(self, job: NewJob, window: timedelta | None, now: datetime) -> Any:
        """Publish unique ``job`` unless a job holds its key; returns None if published,
        else the ``Job`` holding the key.

        The unique index decides: of any number of racing enqueues one inserts, the
        others' INSERT inserts nothing, and the look-up only finds the winner. A holder
        that finished between a conflicting INSERT and the look-up no longer holds the
        key: the INSERT is tried again. With ``window``, a finished job enqueued less
        than that long ago holds it too, which no index can tell: the job is inserted
        (taking the key, so racing enqueues wait or conflict), then such a job is looked
        for, and if there is one the insert is rolled back (a savepoint) and it is
        returned. Inserting first, rather than reading first, keeps a transaction on
        SQLite a writer from its first statement (a reader that then writes fails with
        "database is locked" when another connection wrote in between).
        """
        since = None if window is None else now - window
        for _ in range(UNIQUE_TRIES):
            if since is None:
                if self.broker.publish(job):
                    return None
            else:
                with transaction.atomic(using=self.database):
                    if self.broker.publish(job):
                        holder = self.store.unique_holder(job.unique_key, since=since)
                        if holder is None:
                            return None
                        transaction.set_rollback(True, using=self.database)
                        return holder
            holder = self.store.unique_holder(job.unique_key)
            if holder is not None:
                return holder
        raise EnqueueError(
            f"Could not enqueue {job.task_path} under unique_key {job.unique_key!r}: "
            f"{UNIQUE_TRIES} times a job held the key and finished before it could be read. "
            "Nothing was enqueued; try again."
        )
