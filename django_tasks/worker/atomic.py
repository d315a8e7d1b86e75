"""Atomic tasks (``@task(atomic=True)``): the task's database writes commit together with
its outcome, so a crash never applies them twice (docs/reliability.md, "Exactly-once
effects for database work").

:func:`run_atomically` calls the task inside one transaction on its backend's job
database. If the task returns, its SUCCESSFUL outcome is written in that transaction by
the store (:meth:`~django_tasks.jobs.store.JobStore.apply_in_transaction`: fenced by
the claim's lease, with the outcome hooks, so an atomic chain step advances its chain in
the same transaction), and the transaction commits: the writes and the outcome, or
neither. The outcome then travels as usual, marked ``written``: the worker's round trip
counts it and tells the broker, and writes nothing.

Rolled back instead, the writes never seen by anyone:

- the task raised (a retry, a failure, a soft time limit): the failure or retry is
  written by the round trip, as for any task, in a transaction of its own;
- the lease no longer holds the job (the worker was declared dead and the job rescued,
  cancelled or claimed again): the run is stale, its outcome is discarded;
- the write says anything but SUCCESSFUL (a cancel request came in while it ran), or
  an outcome hook failed: the round trip writes the outcome, as for any task;
- the process died or was killed (``kill -9``, a hard time limit, a cancel's grace
  over) before the commit: the database drops the open transaction and the job is
  rescued and run again.

Writes to another database from inside an atomic task could not commit with its
outcome: they are refused before they run (:class:`~django_tasks.exceptions.NotAtomic`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import connections, transaction

from ..exceptions import NotAtomic, OutcomeHookFailed
from ..jobs.messages import Message, Outcome

__all__ = ["run_atomically"]

logger = logging.getLogger("django_tasks.worker")

# The statements that write (reads of other databases are harmless).
_WRITES = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|MERGE|TRUNCATE|CREATE|ALTER|DROP)\b",
                     re.IGNORECASE)


class _RolledBack(Exception):
    """Leaves the transaction with a rollback, carrying what the run produced."""

    def __init__(self, value: Any, outcome: Outcome | None) -> None:
        self.value, self.outcome = value, outcome


def run_atomically(store: Any, message: Message, worker_id: str, call: Callable[[], Any],
                   success: Callable[[Any], Outcome | None]) -> tuple[Any, Outcome | None]:
    """``call()`` inside a transaction on ``store``'s database; then ``success(value)``,
    the SUCCESSFUL outcome to write in it (None: roll back and write nothing, a task that
    saw its cancel request). Returns the value and the outcome: ``written`` if it
    committed, not if the writes were rolled back. What ``call()`` raises propagates,
    the transaction rolled back."""
    try:
        with _transaction(store.database, message.task_path):
            value = call()
            outcome = success(value)
            if outcome is None:
                raise _RolledBack(value, None)
            try:
                applied = store.apply_in_transaction(worker_id, [outcome])
            except OutcomeHookFailed as failure:
                _rolled_back(message, f"outcome hook {failure.hook} failed")
                raise _RolledBack(value, outcome) from None
            if len(applied) != 1 or applied[0].status != outcome.status:
                _rolled_back(message, f"its outcome would be written {applied[0].status}"
                             if applied else "this worker no longer holds the job (rescued, "
                             "cancelled or claimed again)")
                raise _RolledBack(value, outcome)
            outcome.written = tuple(applied[0])
            return value, outcome
    except _RolledBack as rolled:
        return rolled.value, rolled.outcome


def _rolled_back(message: Message, why: str) -> None:
    logger.warning("Job %s: atomic run rolled back, none of its writes kept: task=%s: %s",
                   message.id, message.task_path, why)


@contextmanager
def _transaction(database: str, task_path: str) -> Iterator[None]:
    """A transaction on ``database``; writes to any other database refused meanwhile."""
    with ExitStack() as stack:
        stack.enter_context(transaction.atomic(using=database))
        for alias in connections:
            if alias != database:
                stack.enter_context(connections[alias].execute_wrapper(
                    _refuse_writes(alias, database, task_path)))
        yield


def _refuse_writes(alias: str, database: str, task_path: str) -> Callable[..., Any]:
    def guard(execute: Callable[..., Any], sql: str, params: Any, many: bool,
              context: dict[str, Any]) -> Any:
        if _WRITES.match(sql):
            raise NotAtomic(
                f"{task_path} is atomic=True and wrote to database {alias!r}, but its jobs "
                f"live in {database!r}: a write there cannot commit with its outcome. Give "
                f"the task a backend whose OPTIONS['DATABASE'] is {alias!r}, or drop atomic."
            )
        return execute(sql, params, many, context)

    return guard
