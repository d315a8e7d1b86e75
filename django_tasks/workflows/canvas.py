"""Workflows: ``chain``, ``group`` and ``chord`` as values, run by the job table.

    from django_tasks import chain, group, chord

    chain(add.s(2, 2), mul.s(4)).delay().get(timeout=10)           # 16
    group(add.s(i, i) for i in range(10)).delay().get(timeout=10)  # [0, 2, ..., 18]
    chord(group(add.s(i, i) for i in range(10)), tsum.s()).delay().get(timeout=10)  # 90

How it runs
-----------
Enqueueing a canvas inserts every job of it at once, in one transaction: the jobs that
depend on nothing as READY, every other one as WAITING with ``waiting_on`` (how many
jobs it waits for) and ``links`` (which jobs it receives results from, which jobs wait
for it). Nothing is kept in worker memory and no task polls.

When a job's outcome is written, :func:`~django_tasks.workflows.advance.advance` runs
in the same transaction (an outcome hook, see :mod:`django_tasks.jobs.store`):

- SUCCESSFUL: each job waiting for it has ``waiting_on`` decremented by one
  ``UPDATE ... RETURNING``; the database serialises concurrent decrements on the row,
  so exactly one outcome sees it reach 0, and that one makes it READY with the results
  it receives prepended to its arguments. The outcome write itself is fenced by the
  job's lease, so a job's success is counted once, whoever wrote it (a rescue, a retry).
- FAILED (after its retries) or CANCELLED: every job waiting for it, directly or
  further down, is FAILED without running (``UpstreamFailed``, naming the job that failed), so
  ``.get()`` raises instead of hanging; a chord's error callback is enqueued by the
  same transition, once.

If the transaction rolls back (an outage), none of this happened and the outcome is
written again later, hooks included: exactly once either way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.tasks import Task as DjangoTask
from django.tasks.exceptions import InvalidTask

from ..results import GroupResult, JobResult

logger = logging.getLogger("django_tasks.worker")

__all__ = ["Signature", "chain", "chord", "group", "linked", "signature"]

#: What a node of a canvas may be.
Node = Any  # Signature | chain | group | chord
#: A canvas's output: a job id, or a list of outputs (a group's members, in order).
Tree = Any  # str | list[Tree]


class _Step:
    """What every workflow value can do: be piped, and be enqueued (Celery's verbs)."""

    def __or__(self, other: Node) -> chain:
        # ``a | b`` is a chain; ``group | step`` a chord (the step gets the list).
        return chain(self, other)

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        """Enqueue the whole workflow in one transaction; ``args`` are prepended to the
        first step's (each member's, for a group). Returns the result of what ends it:
        a ``JobResult``, or a ``GroupResult`` for a group."""
        return _enqueue(self, args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's name for :meth:`enqueue`."""
        return self.enqueue(*args, **kwargs)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None) -> Any:
        """Celery's call; job options go on the steps, with ``.set()``."""
        return self.enqueue(*(args or ()), **(kwargs or {}))


@dataclass(frozen=True)
class Signature(_Step):
    """A task with some of its arguments: a step of a workflow.

    ``task.s(*args, **kwargs)`` is partial (it receives the previous step's result as
    its first argument); ``task.si(...)`` is immutable (it does not).
    """

    task: DjangoTask
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    immutable: bool = False
    #: ``queue``, ``priority``, ``countdown`` (seconds after it becomes ready).
    options: Mapping[str, Any] = field(default_factory=dict)

    def set(self, *, queue: str | None = None, priority: int | None = None,
            countdown: float | None = None) -> Signature:
        """A copy with these options (Celery's ``.set()``)."""
        options = dict(self.options)
        for name, value in (("queue", queue), ("priority", priority), ("countdown", countdown)):
            if value is not None:
                options[name] = value
        if countdown is not None and (isinstance(countdown, bool) or
                                      not isinstance(countdown, int | float) or countdown < 0):
            raise TypeError(f"countdown must be a number of seconds >= 0; got {countdown!r}.")
        return replace(self, options=options)

    def to_dict(self) -> dict[str, Any]:
        """As stored in a job's ``links`` (an error callback)."""
        return {"task": self.task.module_path, "args": list(self.args),
                "kwargs": dict(self.kwargs), "immutable": self.immutable,
                "options": dict(self.options)}

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task.module_path}.{'si' if self.immutable else 's'}({call})"


def signature(task: DjangoTask, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
              *, immutable: bool = False, **options: Any) -> Signature:
    """``Signature`` for ``task`` (Celery's ``signature()``)."""
    return Signature(task, tuple(args), dict(kwargs or {}), immutable).set(**options)


def _members(tasks: tuple[Any, ...]) -> list[Node]:
    """``f(a, b)`` or ``f([a, b])`` or ``f(x for x in ...)``, as Celery takes them."""
    if len(tasks) == 1 and not _is_node(tasks[0]) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])
    for t in tasks:
        if not _is_node(t):
            raise TypeError(f"{t!r} is not a workflow step: use task.s(...), task.si(...), "
                            "chain(...), group(...) or chord(...).")
    return list(tasks)


def _ends_in_one(node: Node) -> bool:
    """Whether one job ends ``node`` (a task, or a chain or chord ending in one)."""
    if isinstance(node, chain):
        return _ends_in_one(node.tasks[-1])
    if isinstance(node, chord):
        return node.body is not None and _ends_in_one(node.body)
    return isinstance(node, Signature)


def _is_node(value: Any) -> bool:
    return isinstance(value, _Step)


class chain(_Step):  # Celery's name
    """Steps one after the other, each receiving the previous one's result."""

    def __init__(self, *tasks: Any) -> None:
        steps: list[Node] = []
        for step in _members(tasks):
            steps.extend(step.tasks if isinstance(step, chain) else [step])
        if not steps:
            raise ValueError("chain() needs at least one step.")
        self.tasks = steps

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))


class group(_Step):  # Celery's name
    """Steps that run in parallel; its result is the list of theirs, in order."""

    def __init__(self, *tasks: Any) -> None:
        self.tasks = _members(tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"


class chord(_Step):  # Celery's name
    """A group, then ``body`` with the list of its results: the body runs exactly once,
    when every member has succeeded. If a member fails (after its retries) the body
    does not run (it is FAILED, so ``.get()`` raises) and ``on_error`` (a signature)
    is enqueued once, with the id of the job that failed as its first argument."""

    def __init__(self, header: Any, body: Signature | None = None, *,
                 on_error: Signature | None = None) -> None:
        self.header = header if isinstance(header, group) else group(header)
        if body is not None and not _is_node(body):
            raise TypeError(f"chord body {body!r} is not a workflow step (task.s(...)).")
        if on_error is not None and not isinstance(on_error, Signature):
            raise TypeError(f"on_error must be a signature (task.s(...)); got {on_error!r}.")
        if on_error is not None and body is not None and not _ends_in_one(body):
            # The error callback rides on the one job that ends the chord; a group body
            # has several, and each would call it.
            raise TypeError("on_error needs a chord body that is a task or a chain ending in "
                            f"one; got {body!r}.")
        self.body = body
        self.errback = on_error

    def on_error(self, errback: Signature) -> chord:
        return chord(self.header, self.body, on_error=errback)

    def __call__(self, body: Signature | None = None) -> Any:
        """Celery's ``chord(header)(body)``: enqueue at once."""
        return chord(self.header, body or self.body, on_error=self.errback).enqueue()

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        """Enqueue header and body; returns the body's result."""
        if self.body is None:
            raise ValueError("chord() needs a body: chord(header, body) or chord(header)(body).")
        return _enqueue(self, args, kwargs)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


class _Linked(_Step):
    """One job with Celery's ``link`` (callbacks run after it succeeds, each receiving
    its result unless immutable) and ``link_error`` (error callbacks enqueued once if it
    fails for good, with its id first): a chain of one. Made by :func:`linked`."""

    def __init__(self, step: Signature, callbacks: list[Signature],
                 errbacks: list[Signature]) -> None:
        self.step, self.callbacks, self.errbacks = step, callbacks, errbacks


def _signatures(option: str, value: Any) -> list[Signature]:
    if value is None:
        return []
    values = list(value) if isinstance(value, list | tuple) else [value]
    for v in values:
        if not isinstance(v, Signature):
            raise TypeError(f"{option}= takes a signature (task.s(...)) or a list of them; "
                            f"got {v!r}.")
    return values


def linked(step: Signature, link: Any = None, link_error: Any = None) -> JobResult:
    """Enqueue ``step`` with Celery's ``link`` / ``link_error`` (signatures, or lists of
    them), in one transaction; returns the step's own result, as Celery does."""
    node = _Linked(step, _signatures("link", link), _signatures("link_error", link_error))
    return _enqueue(node, (), {})


# -- planning: a canvas -> job rows ----------------------------------------------------------


@dataclass
class _Job:
    sig: Signature
    job: Any  # the unsaved Job
    inputs: Tree | None  # what it receives (None: a first step)
    errbacks: list[dict[str, Any]] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)


class _Plan:
    def __init__(self) -> None:
        self.steps: dict[str, _Job] = {}
        self.results: dict[str, JobResult] = {}
        self.workflow_id = uuid.uuid4()
        self.backend: Any = None

    def add(self, node: Node, upstream: Tree | None, extra: tuple[Any, ...],
            extra_kwargs: Mapping[str, Any], errbacks: list[dict[str, Any]]) -> Tree:
        """Plan ``node`` after ``upstream`` (whose output it receives); returns its output."""
        if isinstance(node, Signature):
            return self._step(node, upstream, extra, extra_kwargs, errbacks)
        if isinstance(node, chain):
            out = upstream
            for i, step in enumerate(node.tasks):
                last = i == len(node.tasks) - 1
                out = self.add(step, out, extra if i == 0 else (),
                               extra_kwargs if i == 0 else {}, errbacks if last else [])
            return out
        if isinstance(node, group):
            return [self.add(m, upstream, extra, extra_kwargs, []) for m in node.tasks]
        if isinstance(node, _Linked):
            for errback in node.errbacks:
                self.check_errback(errback)
            out = self._step(node.step, upstream, extra, extra_kwargs,
                             [e.to_dict() for e in node.errbacks] + errbacks)
            for callback in node.callbacks:
                self.add(callback, out, (), {}, [])
            return out
        assert isinstance(node, chord)
        header = self.add(node.header, upstream, extra, extra_kwargs, [])
        own = []
        if node.errback is not None:
            self.check_errback(node.errback)
            own = [node.errback.to_dict()]
        return self.add(node.body, header, (), {}, own + errbacks)

    def check_errback(self, errback: Signature) -> None:
        """Refuse now an error callback that could not be enqueued at the failure: it
        gets the failed job's id first (unless immutable)."""
        backend = errback.task.get_backend()
        backend.new_job(errback.task, errback.args, dict(errback.kwargs),
                        receives_input=not errback.immutable)

    def _step(self, sig: Signature, upstream: Tree | None, extra: tuple[Any, ...],
              extra_kwargs: Mapping[str, Any], errbacks: list[dict[str, Any]]) -> str:
        task = sig.task
        options = sig.options
        using: dict[str, Any] = {}
        if "queue" in options:
            using["queue_name"] = options["queue"]
        if "priority" in options:
            using["priority"] = options["priority"]
        waits = sorted(set(tree_ids(upstream))) if upstream is not None else []
        if not waits and options.get("countdown"):  # ready at once: due after countdown
            using["run_after"] = timedelta(seconds=options["countdown"])
        if using:
            task = task.using(**using)
        backend = task.get_backend()
        if not getattr(backend, "supports_workflows", False):
            raise InvalidTask(f"{task.module_path} uses {type(backend).__name__}: workflows "
                              "need a django_tasks backend.")
        if self.backend is None:
            self.backend = backend
        elif backend is not self.backend:
            raise InvalidTask(f"{task.module_path} uses backend {backend.alias!r} and another "
                              f"step uses {self.backend.alias!r}: a workflow's steps share one.")
        receives = upstream is not None and not sig.immutable
        args = (*extra, *sig.args)
        kwargs = {**sig.kwargs, **extra_kwargs}
        if receives and not waits:
            # After an empty group: its result (empty lists) is known now.
            args, receives = (upstream, *args), False
        # The task's own checks are made once per task however many steps (the
        # backend remembers them: Enqueueing._plan_for).
        job = backend.new_job(task, args, kwargs, receives_input=receives)
        # A workflow's steps are its own: a step is never swapped for another job
        # holding the same unique key (its dependents wait for this one).
        job.unique_key = ""
        job.workflow_id = str(self.workflow_id)
        job_id = str(job.id)
        if waits:
            job.status = "WAITING"
            job.waiting_on = len(waits)
        for dependency in waits:
            self.steps[dependency].dependents.append(job_id)
        self.steps[job_id] = _Job(sig, job, upstream, list(errbacks))
        return job_id

    def store(self) -> None:
        for step in self.steps.values():
            links: dict[str, Any] = {}
            if step.dependents:
                links["dependents"] = step.dependents
            if step.inputs is not None:
                links["inputs"] = step.inputs
                links["mode"] = "none" if step.sig.immutable else "value"
                if step.sig.options.get("countdown"):
                    links["countdown"] = float(step.sig.options["countdown"])
            if step.errbacks:
                links["errbacks"] = step.errbacks
            step.job.links = links or None
            if len(self.steps) == 1:
                step.job.workflow_id = None  # one step alone is a plain job
        # One transaction: no step can start (or end) before every row exists. One
        # INSERT per batch of steps (BATCH_SIZE), however many; ``task_enqueued`` is
        # sent for every step once it commits.
        steps = list(self.steps.values())
        with transaction.atomic(using=self.backend.store.database):
            results = self.backend.store_many([s.job for s in steps],
                                              [s.sig.task for s in steps])
        self.results = {str(s.job.id): r for s, r in zip(steps, results, strict=True)}

    def result(self, tree: Tree) -> JobResult | GroupResult:
        if isinstance(tree, list):
            return GroupResult([self.result(t) for t in tree], id=str(self.workflow_id))
        return self.results[tree]


def tree_ids(tree: Tree) -> Iterator[str]:
    """The job ids in an output tree, depth first."""
    if isinstance(tree, list):
        for t in tree:
            yield from tree_ids(t)
    elif tree is not None:
        yield tree


def _enqueue(node: Node, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    plan = _Plan()
    tree = plan.add(node, None, tuple(args), dict(kwargs), [])
    if plan.backend is None:  # an empty group: nothing to store
        return GroupResult([], id=str(plan.workflow_id))
    plan.store()
    return plan.result(tree)
