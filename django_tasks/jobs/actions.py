"""What an operator does to jobs: retry, cancel, retry every failed job of a selection,
purge a queue. One implementation for the admin's actions and buttons and for
``manage.py tasks``; each goes through the backend's public verbs
(``ModelBackend.retry``, ``ModelBackend.cancel``) so workers wake and workflows move on
exactly as after ``result.cancel()``, and each works in batches, never one statement
over a million rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet
from django.tasks import task_backends

from ..states import CANCELLED, FAILED, FINISHED, READY, SUCCESSFUL

__all__ = ["BATCH", "PURGED", "SKIP_REASONS", "Cancelled", "Retried", "cancel", "id_batches",
           "purge", "purgeable", "retry", "retry_failed_in", "skip_reasons"]

#: Ids handed to the backend per call, and rows deleted per statement.
BATCH = 500
#: The statuses ``purge`` deletes: jobs no worker holds and nothing waits for.
PURGED = (READY, SUCCESSFUL, FAILED, CANCELLED)

#: Why a job was not retried, in the words the admin and the CLI print.
SKIP_REASONS = {
    "not failed": "not FAILED (only failed jobs are retried)",
    "never ran": "a workflow step that never ran because a step before it failed "
                 "(retry that step instead)",
    "key held": "a unique job whose key another job holds now",
    "unknown": "no such job",
}


@dataclass
class Retried:
    """What a retry did: the ids made READY, and how many were skipped for each reason
    (a key of ``SKIP_REASONS``)."""

    ids: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Retried) -> None:
        self.ids.extend(other.ids)
        self.skipped.update(other.skipped)

    def skipped_text(self) -> str:
        """``"2 not FAILED (...); 1 a workflow step ..."``, or ""."""
        return "; ".join(f"{n} {SKIP_REASONS[why]}" for why, n in sorted(self.skipped.items()))


@dataclass
class Cancelled:
    """What a cancel did to each job (``JobStore.cancel``'s words), counted."""

    each: dict[str, str] = field(default_factory=dict)

    def count(self, what: str) -> int:
        return sum(1 for v in self.each.values() if v == what)

    @property
    def finished(self) -> int:
        return sum(1 for v in self.each.values() if v.startswith("finished "))


def _by_backend(jobs: QuerySet[Any], ids: Iterable[Any]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for job_id, alias in jobs.filter(pk__in=list(ids)).values_list("pk", "backend"):
        by.setdefault(alias, []).append(str(job_id))
    return by


def _ids(values: Iterable[Any]) -> list[str]:
    """Canonical job ids; what is not a UUID is dropped (it names no job)."""
    import uuid

    ids = []
    for value in values:
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            continue
    return ids


def _chunks(values: Sequence[Any], size: int | None = None) -> Iterator[Sequence[Any]]:
    size = size or BATCH
    for start in range(0, len(values), size):
        yield values[start:start + size]


def id_batches(selection: QuerySet[Any], size: int | None = None) -> Iterator[list[Any]]:
    """The ids of ``selection``, ``size`` at a time, by keyset on the primary key: the
    admin's "select all N" over a million jobs is read a batch at a time, never whole."""
    size = size or BATCH
    ordered = selection.order_by("pk").values_list("pk", flat=True)
    last = None
    while True:
        ids = list((ordered if last is None else ordered.filter(pk__gt=last))[:size])
        if not ids:
            return
        yield ids
        last = ids[-1]


def skip_reasons(jobs: QuerySet[Any], ids: Sequence[str]) -> Counter[str]:
    """Why each of ``ids`` (asked for, not retried) was skipped, counted."""
    reasons: Counter[str] = Counter()
    found = 0
    for status, attempts, links, _key in jobs.filter(pk__in=list(ids)).values_list(
            "status", "attempts", "links", "unique_key"):
        found += 1
        if status != FAILED:
            reasons["not failed"] += 1
        elif attempts == 0 and isinstance(links, dict) and "inputs" in links:
            reasons["never ran"] += 1
        else:
            reasons["key held"] += 1
    if len(ids) > found:
        reasons["unknown"] += len(ids) - found
    return reasons


def retry(jobs: QuerySet[Any], ids: Sequence[Any], *, by: str) -> Retried:
    """Retry the FAILED jobs among ``ids`` (of ``jobs``, a Job queryset on the right
    database), each through its backend's ``retry``; the others are counted by reason."""
    wanted = _ids(ids)
    done = Retried()
    for alias, alias_ids in _by_backend(jobs, wanted).items():
        for chunk in _chunks(alias_ids):
            done.ids.extend(task_backends[alias].retry(chunk, by=by))
    retried = set(done.ids)
    done.skipped = skip_reasons(jobs, [i for i in wanted if i not in retried])
    done.skipped["unknown"] += len(ids) - len(wanted)
    if not done.skipped["unknown"]:
        del done.skipped["unknown"]
    return done


def cancel(jobs: QuerySet[Any], ids: Sequence[Any], *, by: str) -> Cancelled:
    """Cancel ``ids`` through their backends' ``cancel`` (``JobStore.cancel``: not
    started, CANCELLED at once; held, its worker stops it); ids of no job read
    ``"unknown"``."""
    wanted = _ids(ids)
    done = Cancelled()
    for alias, alias_ids in _by_backend(jobs, wanted).items():
        for chunk in _chunks(alias_ids):
            done.each.update(task_backends[alias].cancel(chunk, by=by))
    for job_id in wanted:
        done.each.setdefault(job_id, "unknown")
    for value in ids:
        if str(value) not in done.each and not _ids([value]):
            done.each[str(value)] = "unknown"
    return done


def retry_failed_in(selection: QuerySet[Any], *, by: str,
                    batch_size: int | None = None) -> Retried:
    """Retry every FAILED job of ``selection`` (say, the admin's filtered list), newest
    first, ``batch_size`` at a time: each batch is found by keyset on the failed-jobs
    index (``enqueued_at``, id) and retried in its own transaction, so a million
    failed jobs are a thousand short statements, not one long one."""
    failed = selection.filter(status=FAILED).order_by("-enqueued_at", "-pk")
    batch_size = batch_size or BATCH
    done = Retried()
    after: tuple[Any, Any] | None = None
    while True:
        page = failed
        if after is not None:
            page = failed.filter(Q(enqueued_at__lt=after[0])
                                 | Q(enqueued_at=after[0], pk__lt=after[1]))
        rows = list(page.values_list("pk", "enqueued_at")[:batch_size])
        if not rows:
            return done
        done.add(retry(selection.model._base_manager.using(selection.db),
                       [pk for pk, _ in rows], by=by))
        after = (rows[-1][1], rows[-1][0])


def purgeable(jobs: QuerySet[Any], queue: str) -> QuerySet[Any]:
    """The jobs ``purge`` deletes from ``queue``: READY (due or scheduled) and finished
    ones (SUCCESSFUL, FAILED, CANCELLED) that no worker holds and that belong to no
    workflow. Never CLAIMED or RUNNING jobs (a worker holds them: cancel those), nor
    WAITING ones, nor any job of a chain, group or chord (its other steps wait for it
    or read its result: cancel the workflow instead)."""
    return jobs.filter(queue_name=queue, status__in=PURGED, lease="", workflow_id__isnull=True)


def purge(jobs: QuerySet[Any], queue: str, *, batch_size: int | None = None) -> dict[str, int]:
    """Delete ``purgeable(jobs, queue)``, ``batch_size`` rows per statement (READY jobs
    by the claim index, finished ones by the finished-at index); returns how many,
    ``{"ready": n, "finished": m}``. A READY job claimed between a batch's look-up and
    its delete is kept: the delete matches status and lease again."""
    batch_size = batch_size or BATCH
    deleted = {"ready": 0, "finished": 0}
    base = jobs.model._base_manager.using(jobs.db)
    for kind, statuses in (("ready", (READY,)), ("finished", FINISHED)):
        rows = purgeable(jobs, queue).filter(status__in=statuses)
        while True:
            ids = list(rows.values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            gone = base.filter(pk__in=ids, status__in=statuses, lease="").delete()[0]
            if not gone:
                break
            deleted[kind] += gone
    return deleted
