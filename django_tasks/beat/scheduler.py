"""Periodic tasks: every tick of every schedule is enqueued exactly once.

A :class:`Scheduler` serves one backend. ``manage.py beat`` runs one in a loop, and
``manage.py worker --beat`` runs one as a duty of the worker; run as many as you like,
on as many machines: they agree through the database.

How a tick fires exactly once
-----------------------------
Each :class:`~django_tasks.models.Schedule` row keeps ``checked_until``: every tick up
to then has been decided (enqueued or skipped). A scheduler pass, at the database's
``now``, takes the ticks in ``(checked_until, now]`` that the schedule's catch-up policy
says to run and, for each, in one transaction: inserts a
:class:`~django_tasks.models.ScheduleTick` row (unique on schedule and tick time) and
enqueues the job. Two schedulers racing for a tick both try the insert; the database
lets one commit and the other gets an ``IntegrityError`` and enqueues nothing. A
scheduler that dies after the commit and before moving ``checked_until`` leaves the
tick row behind, so the next pass (its own or another's) skips it. The tick table is
not the job table: pruning jobs never makes a tick fire again.

Time is the database's clock (every host agrees on it) and is a parameter of every
step, so tests step time instead of sleeping. The maths of ticks, time zones and DST
is pure and lives in :mod:`django_tasks.schedules`.

Catch-up, after no scheduler ran for a while
--------------------------------------------
- ``skip`` (default): missed ticks are dropped. A pass runs at most the latest due
  tick, and only if it is at most ``GRACE`` seconds late.
- ``latest``: the latest missed tick runs once, however late.
- ``all``: every missed tick runs, oldest first, at most ``CATCH_UP_LIMIT`` (the
  oldest beyond that are dropped, with a warning). The ticks of one pass are decided
  together (:meth:`Scheduler.fire_many`: one bulk enqueue, one INSERT of tick rows,
  one transaction), or one by one if another scheduler had one of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, connections, transaction

from ..conf import ScheduleEntry
from ..conf import backend as tasks_backend
from ..outage import Outage

__all__ = ["CATCH_UP_LIMIT", "GRACE", "Fired", "Scheduler", "check_schedules"]

logger = logging.getLogger("django_tasks.beat")

#: Seconds late a tick may be and still run under ``catch_up="skip"``.
GRACE = 60.0
#: Most missed ticks one pass runs under ``catch_up="all"``.
CATCH_UP_LIMIT = 100
#: Longest a scheduler waits between passes (it notices admin edits this fast).
MAX_WAIT = 1.0


@dataclass(frozen=True)
class Fired:
    """A tick this scheduler enqueued (``job_id``) or failed to (``error``)."""

    schedule: str
    tick_at: datetime
    job_id: str | None
    error: str = ""


def entry_digest(entry: ScheduleEntry) -> str:
    """What identifies a settings entry's definition (``enabled`` excluded: the admin's)."""
    definition = {
        "task": entry.task, "timing": timing_fields(entry.timing), "args": list(entry.args),
        "kwargs": dict(entry.kwargs), "queue": entry.queue, "priority": entry.priority,
        "timezone": entry.timezone, "catch_up": entry.catch_up,
    }
    text = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def timing_fields(timing: Any) -> dict[str, Any]:
    """The model fields (``cron``, ``interval``) that store ``timing``."""
    from ..schedules import crontab

    if isinstance(timing, crontab):
        return {"cron": timing.expression, "interval": None}
    return {"cron": "", "interval": float(timing.seconds)}


class Scheduler:
    """Fires the due ticks of one backend's schedules; see the module docstring."""

    def __init__(self, backend: str = "default") -> None:
        self.backend = tasks_backend(backend)
        if not hasattr(self.backend, "store"):
            raise ImproperlyConfigured(
                f"TASKS[{backend!r}] uses {type(self.backend).__name__}, which has no "
                "schedules; periodic tasks need a django_tasks backend."
            )
        self.alias = self.backend.alias
        self.store = self.backend.store
        self.database = self.store.database

    def _schedules(self) -> Any:
        from ..models import Schedule

        return Schedule.objects.using(self.database).filter(backend=self.alias)

    # -- settings -------------------------------------------------------------------------

    def sync(self, entries: Sequence[ScheduleEntry] | None = None,
             now: datetime | None = None) -> dict[str, int]:
        """Make the schedule rows match ``OPTIONS["SCHEDULE"]`` (or ``entries``).

        A new entry gets a row (``enabled`` as the entry says). An entry whose
        definition changed in the settings overwrites its row, except ``enabled``, which
        stays as the admin left it; an unchanged entry leaves the row alone, so timing
        edits made in the admin stay until the settings change that entry. A row whose
        entry is gone from the settings stops firing and is marked removed (kept, with
        its history; delete it in the admin). Rows made in the admin are left alone.
        Returns counts: created, updated, removed.
        """
        from ..models import Schedule

        if entries is None:
            entries = self.backend.config.schedule
        now = now or self.store.now()
        counts = {"created": 0, "updated": 0, "removed": 0}
        rows = {s.name: s for s in self._schedules()}
        for entry in entries:
            digest = entry_digest(entry)
            row = rows.pop(entry.name, None)
            if row is not None and row.settings_digest == digest and row.removed_at is None:
                continue
            fields = {
                "task_path": entry.task, "args": list(entry.args), "kwargs": dict(entry.kwargs),
                "queue_name": entry.queue, "priority": entry.priority,
                "timezone": entry.timezone, "catch_up": entry.catch_up,
                "origin": Schedule.Origin.SETTINGS, "settings_digest": digest, "removed_at": None,
                **timing_fields(entry.timing),
            }
            if row is None:
                row = Schedule(backend=self.alias, name=entry.name, enabled=entry.enabled,
                               **fields)
                row.restart_at(now)
                try:
                    with transaction.atomic(using=self.database):
                        row.save(using=self.database)
                except IntegrityError:
                    continue  # another scheduler created it at the same moment
                counts["created"] += 1
                logger.info("Schedule %r added from settings: %s, next run %s", entry.name,
                            row.describe(), row.next_run_at)
                continue
            retimed = (row.cron, row.interval, row.timezone) != (
                fields["cron"], fields["interval"], fields["timezone"]) or row.removed_at
            for name, value in fields.items():
                setattr(row, name, value)
            if retimed:
                row.restart_at(now)
            row.save(using=self.database)
            counts["updated"] += 1
            logger.info("Schedule %r updated from settings: %s", entry.name, row.describe())
        for row in rows.values():
            if row.origin == Schedule.Origin.SETTINGS and row.removed_at is None:
                row.removed_at, row.next_run_at = now, None
                row.save(using=self.database, update_fields=["removed_at", "next_run_at",
                                                             "updated_at"])
                counts["removed"] += 1
                logger.warning("Schedule %r is no longer in the settings: it stops firing "
                               "(its row and history stay; delete it in the admin)", row.name)
        return counts

    # -- firing -----------------------------------------------------------------------------

    def run_due(self, now: datetime | None = None) -> list[Fired]:
        """One pass: fire the due ticks of every active schedule, at the database's ``now``."""
        now = now or self.store.now()
        fired: list[Fired] = []
        for schedule in self._schedules().due(now):
            fired.extend(self._run_schedule(schedule, now))
        return fired

    def next_due(self) -> datetime | None:
        """The earliest next tick among active schedules (None: nothing scheduled)."""
        row = (self._schedules().active().filter(next_run_at__isnull=False)
               .order_by("next_run_at").values_list("next_run_at", flat=True).first())
        return row

    def _to_fire(self, schedule: Any, now: datetime) -> list[datetime]:
        """The ticks in ``(checked_until, now]`` the catch-up policy runs, oldest first."""
        timing, zone, since = schedule.timing(), schedule.zone(), schedule.checked_until
        if schedule.catch_up == "all":
            # Bounded look-back: a schedule idle for years does not iterate them all.
            start = max(since, now - timedelta(days=366))
            ticks: deque[datetime] = deque(maxlen=CATCH_UP_LIMIT)
            total = 0
            for tick in timing.ticks(start, now, zone):
                ticks.append(tick)
                total += 1
            if total > len(ticks):
                logger.warning("Schedule %r: %d missed ticks; running the latest %d, dropping "
                               "the older ones", schedule.name, total, len(ticks))
            return list(ticks)
        latest = timing.latest(now, zone)
        if latest is None or latest <= since:
            return []
        missed = timing.next_after(since, zone) < latest
        late = (now - latest).total_seconds() > GRACE
        if schedule.catch_up == "skip" and late:
            logger.info("Schedule %r: missed tick(s) up to %s skipped (catch_up='skip')",
                        schedule.name, latest.isoformat())
            return []
        if missed:
            logger.info("Schedule %r: missed tick(s) before %s skipped (catch_up=%r)",
                        schedule.name, latest.isoformat(), schedule.catch_up)
        return [latest]

    def _run_schedule(self, schedule: Any, now: datetime) -> list[Fired]:
        from ..models import Schedule

        try:
            ticks = self._to_fire(schedule, now)
            next_run: datetime | None = schedule.next_after(now)
        except ValueError as exc:  # a row edited outside the admin's validation
            self._schedules().filter(pk=schedule.pk).update(
                next_run_at=None, last_error=f"Invalid timing: {exc}")
            logger.error("Schedule %r has an invalid timing and stops firing: %s",
                         schedule.name, exc)
            return []
        fired = self.fire_many(schedule, ticks, now) if len(ticks) > 1 else None
        if fired is None:
            fired = [f for f in (self.fire(schedule, tick, now=now) for tick in ticks) if f]
        # Only forward: a slower scheduler that read the row earlier moves nothing back.
        Schedule.objects.using(self.database).filter(
            pk=schedule.pk, checked_until__lt=now).update(checked_until=now,
                                                          next_run_at=next_run)
        return fired

    def fire(self, schedule: Any, tick: datetime, *, now: datetime | None = None,
             manual: bool = False) -> Fired | None:
        """Enqueue ``schedule``'s task for ``tick`` unless that tick was enqueued already.

        Returns what happened, or None if another scheduler had the tick. The tick row
        and the job row commit together (with the Redis broker, its message follows
        the commit). A task that refuses the call (its arguments no longer fit, say) is
        recorded on the tick and the schedule as an error; the tick is not retried.
        """
        from ..models import Schedule, ScheduleTick

        now = now or self.store.now()
        try:
            with transaction.atomic(using=self.database):
                row = ScheduleTick.objects.using(self.database).create(
                    schedule_id=schedule.pk, tick_at=tick, enqueued_at=now, manual=manual)
                job_id, error = self._enqueue(schedule)
                ScheduleTick.objects.using(self.database).filter(pk=row.pk).update(
                    job_id=job_id, error=error)
                updates: dict[str, Any] = {"last_error": error}
                if job_id is not None:
                    updates["last_job_id"] = job_id
                Schedule.objects.using(self.database).filter(pk=schedule.pk).update(**updates)
                # Moves forward only (a run-now tick is now; ticks fire in order).
                Schedule.objects.using(self.database).filter(pk=schedule.pk).exclude(
                    last_run_at__gte=tick).update(last_run_at=tick)
        except IntegrityError:
            return None  # another scheduler enqueued this tick (or the schedule is gone)
        if error:
            logger.error("Schedule %r could not enqueue %s for %s: %s", schedule.name,
                         schedule.task_path, tick.isoformat(), error)
        else:
            logger.info("Schedule %r enqueued %s for %s: job %s", schedule.name,
                        schedule.task_path, tick.isoformat(), job_id)
        return Fired(schedule.name, tick, job_id, error)

    def fire_many(self, schedule: Any, ticks: Sequence[datetime],
                  now: datetime) -> list[Fired] | None:
        """Enqueue ``schedule``'s task once for each of ``ticks`` (a catch-up), in one
        transaction: one bulk enqueue (``enqueue_many``: one INSERT per batch) and one
        INSERT of their tick rows. None, having stored nothing, when that cannot be done
        at once (another scheduler had one of the ticks, or the task refuses the call):
        :meth:`fire` then decides each tick on its own, as it always does."""
        from ..models import Schedule, ScheduleTick
        from ..task import enqueue_many

        try:
            with transaction.atomic(using=self.database):
                try:
                    call = (self._task(schedule), schedule.args, schedule.kwargs)
                    results = enqueue_many([call] * len(ticks))
                except DatabaseError:
                    raise
                except Exception:  # refused: recorded tick by tick by fire()
                    return None
                ScheduleTick.objects.using(self.database).bulk_create([
                    ScheduleTick(schedule_id=schedule.pk, tick_at=tick, enqueued_at=now,
                                 job_id=result.id)
                    for tick, result in zip(ticks, results, strict=True)])
                Schedule.objects.using(self.database).filter(pk=schedule.pk).update(
                    last_error="", last_job_id=results[-1].id)
                Schedule.objects.using(self.database).filter(pk=schedule.pk).exclude(
                    last_run_at__gte=ticks[-1]).update(last_run_at=ticks[-1])
        except IntegrityError:
            return None  # another scheduler had a tick (or the schedule is gone)
        logger.info("Schedule %r enqueued %s for %d ticks, %s to %s: jobs %s ... %s",
                    schedule.name, schedule.task_path, len(ticks), ticks[0].isoformat(),
                    ticks[-1].isoformat(), results[0].id, results[-1].id)
        return [Fired(schedule.name, tick, result.id)
                for tick, result in zip(ticks, results, strict=True)]

    def _task(self, schedule: Any) -> Any:
        """The schedule's task, with its queue, priority and this backend."""
        from ..jobs.policy import resolve_task

        task = resolve_task(schedule.task_path)
        options: dict[str, Any] = {"backend": self.alias}
        if schedule.queue_name:
            options["queue_name"] = schedule.queue_name
        if schedule.priority is not None:
            options["priority"] = schedule.priority
        return task.using(**options)

    def _enqueue(self, schedule: Any) -> tuple[str | None, str]:
        """Enqueue the schedule's call in the current transaction: (job id, "") or
        (None, why it was refused). Database errors propagate (an outage: retried)."""
        try:
            result = self._task(schedule).enqueue(*schedule.args, **schedule.kwargs)
        except DatabaseError:  # EnqueueError included: the database failed, not the call
            raise
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return result.id, ""

    # -- running ----------------------------------------------------------------------------

    def serve(self, stop: threading.Event, *, sync: bool = True) -> None:
        """``manage.py beat``: sync the settings (unless ``sync`` is False: done
        already), then a pass whenever a tick is due (at least every ``MAX_WAIT``
        seconds, to see admin edits) until ``stop`` is set. Rides out database outages,
        retrying with a growing delay."""
        synced = not sync
        outage = Outage(logger, "Scheduler: database unreachable", "Scheduler: database back")
        while not stop.is_set():
            try:
                if not synced:
                    self.sync()
                    synced = True
                self.run_due()
                wait = self.seconds_to_next()
            except DatabaseError as exc:
                delay = outage.failed(exc)
                for conn in connections.all(initialized_only=True):
                    conn.close()
                stop.wait(delay)
                continue
            outage.recovered()
            stop.wait(wait)

    def seconds_to_next(self) -> float:
        """How long to wait before the next pass: until the earliest tick, at most MAX_WAIT."""
        due = self.next_due()
        if due is None:
            return MAX_WAIT
        return min(MAX_WAIT, max(0.0, (due - self.store.now()).total_seconds()))

    def run_now(self, schedule: Any) -> Fired:
        """Enqueue the schedule's task at once (the admin's "run now"), recorded as a
        manual tick; the schedule's own ticks are unaffected."""
        now = self.store.now()
        while True:
            fired = self.fire(schedule, now, now=now, manual=True)
            if fired is not None:
                return fired
            # Another run at this very microsecond, or the schedule was just deleted.
            if not self._schedules().filter(pk=schedule.pk).exists():
                raise LookupError(f"Schedule {schedule.name!r} was deleted.")
            now += timedelta(microseconds=1)


def check_schedules(backend: Any) -> list[Any]:
    """System-check errors for ``OPTIONS["SCHEDULE"]`` entries whose task cannot run."""
    from django.core import checks

    errors = []
    for entry in backend.config.schedule:
        where = f"TASKS[{backend.alias!r}]['OPTIONS']['SCHEDULE'][{entry.name!r}]"
        problem = backend.call_problem(entry.task, entry.args, dict(entry.kwargs), entry.queue)
        if problem:
            errors.append(checks.Error(f"{where}: {problem}", id="django_tasks.E007"))
    return errors
