"""What the store's statements return, by name: one named tuple per ``RETURNING`` list.

A statement's column list is its row type's fields (``", ".join(MessageRow._fields)``), so
a column added to a row type reaches every statement that returns it, and code reads
``row.attempts``, never ``row[8]``. Values are as the driver returns them: ids are UUIDs
on PostgreSQL and 32 hex digits on SQLite, JSON columns (``JSON_COLUMNS``) are text until
:meth:`Engine.decode <django_tasks.jobs.engine.Engine.decode>` reads them.
An outcome write returns :class:`~django_tasks.jobs.messages.Applied`'s fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .messages import APPLIED_COLUMNS

__all__ = ["JSON_COLUMNS", "MESSAGE_COLUMNS", "CancelledClaim", "Cancelling", "Decremented",
           "ExchangeRow", "FailedStep", "MessageRow", "RunningRow"]

#: The job table's JSON columns (a test checks them against the model's JSONFields).
JSON_COLUMNS = frozenset({"args", "kwargs", "return_value", "errors", "worker_ids", "progress",
                          "links", "cancellation", "retried", "headers"})


class MessageRow(NamedTuple):
    """A claimed job, as a claim returns it (the store makes it a ``Message``)."""

    id: Any
    lease: str
    task_path: str
    queue_name: str
    priority: int
    backend: str
    args: Any
    kwargs: Any
    attempts: int
    max_attempts: int
    worker_ids: Any
    errors: Any
    enqueued_at: Any
    started_at: Any
    run_after: Any
    available_at: Any
    workflow_id: Any
    expires_at: Any
    headers: Any


#: Columns a claim returns, in this order.
MESSAGE_COLUMNS = MessageRow._fields

#: A lost worker's running job (RUNNING_OF): as claimed, and when its attempt started.
RunningRow = NamedTuple(
    "RunningRow", [*MessageRow.__annotations__.items(), ("last_attempted_at", Any)])

#: A row of PostgreSQL's round trip in one statement (``EXCHANGE_*``): ``kind`` ``'c'``
#: for a claimed job (MessageRow's columns), ``'d'`` for an outcome written (Applied's
#: columns). Each column means the same in both kinds, NULL where a kind has none.
ExchangeRow = NamedTuple(
    "ExchangeRow",
    [("kind", str), *MessageRow.__annotations__.items(),
     *((c, Any) for c in APPLIED_COLUMNS if c not in MESSAGE_COLUMNS)])


class Decremented(NamedTuple):
    """A workflow step after DECREMENT: the inputs it still waits for, its plumbing and
    arguments (to prepend its input to once ``waiting_on`` is 0)."""

    waiting_on: int
    links: Any
    args: Any


class Cancelling(NamedTuple):
    """A held job asked to cancel (CANCELLING_OF): the request, an error entry with
    ``"terminate": true`` for Celery's ``revoke(terminate=True)``."""

    id: Any
    cancellation: Any


class CancelledClaim(NamedTuple):
    """A job claimed, never started and asked to cancel (CANCELLED_CLAIMS)."""

    id: Any
    lease: str
    task_path: str


class FailedStep(NamedTuple):
    """A workflow step FAILED because an input failed (FAIL_WAITING): its plumbing, to
    fail what waits for it in turn."""

    links: Any
