"""The typed data of the hot path: a claimed job travels as a :class:`Message` (broker ->
worker -> pool child) and comes back as an :class:`Outcome` (pool -> worker -> store).

Both carry the claim's ``lease``: a token fresh for every claim, which every later
write about the job (its start, its outcome, a progress report, giving it back) must
match. A worker that lost the job (declared dead, its jobs rescued and perhaps claimed
again) still holds the old token, so whatever it writes changes nothing.

Times are ISO 8601 strings (UTC) so that both types cross process boundaries as
plain JSON without a conversion step on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple

__all__ = ["APPLIED_COLUMNS", "Applied", "ByIds", "ByQueues", "Exchanged", "Message", "NewJob",
           "Outcome", "Start", "stale_of"]


@dataclass(slots=True)
class NewJob:
    """A job about to be inserted, checked already: what an enqueue writes
    (``JobStore.insert``, ``JobStore.insert_many``), without a model instance (building
    one cost more than the rest of an enqueue). The columns it leaves out take their
    defaults."""

    #: The job's id, a version-7 UUID as its canonical string.
    id: str
    task_path: str
    queue_name: str
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    max_attempts: int
    enqueued_at: datetime
    #: Django's ``run_after`` (None: due at once, by the database's clock).
    run_after: datetime | None = None
    expires_at: datetime | None = None
    #: A unique job's key ("" for an ordinary job).
    unique_key: str = ""
    #: READY, or WAITING for a workflow step that waits for others.
    status: str = "READY"
    workflow_id: str | None = None
    waiting_on: int = 0
    links: dict[str, Any] | None = None
    #: What the worker gets beside the call: the enqueuer's trace context, the user's
    #: own headers (django_tasks.observe.headers); None when there are none.
    headers: dict[str, Any] | None = None
    #: ``[args, kwargs]`` as JSON text, made once (the size check measures it, the
    #: insert sends it).
    call: str = ""
    #: Where the arguments end in ``call``: ``call[1:call_split]`` is ``args``' JSON,
    #: ``call[call_split + 1:-1]`` ``kwargs``' (0: not known).
    call_split: int = 0


@dataclass(slots=True)
class Message:
    """One claimed job, as a worker and its pool child see it."""

    id: str
    lease: str
    task_path: str
    queue_name: str
    priority: int
    backend: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: The number of the attempt this message is for (1 for the first run).
    attempt: int
    max_attempts: int
    #: One entry per attempt, this one included (Django's ``TaskResult.worker_ids``).
    worker_ids: list[str]
    #: The errors of earlier attempts (dicts as stored on the job row).
    errors: list[dict[str, Any]]
    enqueued_at: str | None
    #: When the job first started (an earlier attempt's start, or this one's).
    started_at: str | None
    run_after: str | None
    available_at: str | None
    #: The job's workflow (chain, group, chord), if it is a step of one.
    workflow_id: str | None = None
    #: Celery's ``expires``: not started by then, it is CANCELLED (``Expired``) unrun.
    expires_at: str | None = None
    #: The job's ``headers`` (the enqueuer's trace context: docs/observability.md), or None.
    headers: dict[str, Any] | None = None
    #: ``time.monotonic()`` when the worker's round trip claimed it into its buffer
    #: (``Ledger.add_claimed``); not sent to a pool child.
    buffered_at: float = field(default=0.0, compare=False, repr=False)

    def to_wire(self) -> list[Any]:
        """The values in field order, JSON-able (for the pipe to a pool child): no keys
        to encode and decode, on a path every job takes twice."""
        return [getattr(self, f) for f in _MESSAGE_FIELDS]

    @classmethod
    def from_wire(cls, data: list[Any]) -> Message:
        return cls(*data)


_MESSAGE_FIELDS = tuple(f.name for f in fields(Message) if f.name != "buffered_at")


@dataclass(slots=True)
class Outcome:
    """How one attempt of a job ended: SUCCESSFUL, FAILED for good, or READY to retry."""

    id: str
    lease: str
    status: str
    return_value: Any = None
    #: The attempt's error (a dict as stored in ``Job.errors``), or None on success.
    error: dict[str, Any] | None = None
    #: Set when the job is finished (SUCCESSFUL or FAILED).
    finished_at: str | None = None
    #: Set on a retry: when the job may run again, by the clock of who decided it.
    retry_at: str | None = None
    #: Set on a retry: seconds from the decision to the next attempt. Where the
    #: database has a clock of its own (PostgreSQL) the job is due this long after the
    #: outcome is written, by the database's clock: the one workers claim by.
    retry_delay: float | None = None
    #: When the attempt started (the worker's record; the row keeps the first start).
    started_at: str | None = None
    #: Filled by the worker: the task path, for log lines about the outcome.
    task_path: str = field(default="", compare=False)
    #: Filled by the worker: the job is a workflow step (its outcome moves the workflow:
    #: the write runs the ``linked_only`` outcome hooks).
    linked: bool = field(default=False, compare=False)
    #: Filled by the worker, for the statistics: seconds the attempt ran, and seconds
    #: the job waited from when it was due (``available_at``) to the attempt's start.
    #: None when unknown (a job cancelled before it ran).
    ran: float | None = field(default=None, compare=False)
    waited: float | None = field(default=None, compare=False)
    #: Set by an atomic task's run (django_tasks.worker.atomic): the outcome is written
    #: already, committed with the task's own writes; these are its :class:`Applied`
    #: values. A round trip reports it applied and writes nothing.
    written: tuple[Any, ...] | None = field(default=None, compare=False)

    def of(self, message: Message) -> None:
        """Fill in what the write of this outcome needs from its job's message: when it
        started, its task (log lines), whether it is a workflow step (``linked``)."""
        self.started_at = message.started_at
        self.task_path = message.task_path
        self.linked = message.workflow_id is not None

    def to_wire(self) -> list[Any]:
        return [getattr(self, f) for f in _OUTCOME_FIELDS]

    @classmethod
    def from_wire(cls, data: list[Any]) -> Outcome:
        return cls(*data)


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


class Start(NamedTuple):
    """A job handed to a pool slot: recorded as RUNNING (attempt counted) by the next write."""

    id: str
    lease: str
    at: str


class Applied(NamedTuple):
    """An outcome the store accepted (the lease still held the job), as written."""

    id: str
    status: str
    task_path: str
    queue_name: str
    attempts: int
    #: The job's workflow plumbing (``Job.links``), None for a job outside a workflow.
    links: dict[str, Any] | None = None


#: Columns an outcome write returns, as an :class:`Applied` (its fields, in order).
APPLIED_COLUMNS = Applied._fields


class ByQueues(NamedTuple):
    """A claim of the best ready jobs of ``queues`` (highest priority, then oldest), up to
    ``limit``: the job table is the queue (the database broker)."""

    queues: Sequence[str]
    limit: int

    @property
    def wanted(self) -> bool:
        return bool(self.queues) and self.limit > 0


class ByIds(NamedTuple):
    """A claim of these jobs, where they are still READY and due: a broker that carries
    ids (Redis) chose them; a duplicated or stale id claims nothing.

    ``no_disk_wait``: a claim made alone need not wait for the disk, because the broker
    recovers one that a PostgreSQL crash loses (the row is READY again): Redis's
    reconcile republishes a READY row it no longer carries; the RabbitMQ broker
    acknowledges the messages only once a later commit waited for the disk, and gives
    them back after an outage (docs/reliability.md, the duplicate window)."""

    ids: Sequence[str]
    no_disk_wait: bool = False

    @property
    def wanted(self) -> bool:
        return bool(self.ids)


class Exchanged(NamedTuple):
    """What one round trip (:meth:`JobStore.exchange`, ``Broker.exchange``) did."""

    #: Jobs claimed for the worker, best first.
    claimed: list[Message]
    #: Outcomes written (their lease still held the job).
    applied: list[Applied]
    #: Outcomes discarded: the job was no longer held under their lease.
    stale: list[Outcome]
    #: Ids claimed whose rows could not be read: the store failed them, nobody runs them.
    unreadable: tuple[str, ...] = ()


def stale_of(outcomes: Sequence[Outcome], applied: Sequence[Applied]) -> list[Outcome]:
    """Those of ``outcomes`` that were not written."""
    written = {a.id for a in applied}
    return [o for o in outcomes if o.id not in written]
