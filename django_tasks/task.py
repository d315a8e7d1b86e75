"""Our ``Task``: Django's task plus retries, Celery's verbs, and routing awareness.

Backends set ``task_class = django_tasks.Task``, so Django's own decorator accepts
the extra options::

    from django.tasks import task

    @task(queue_name="emails", max_attempts=5, retry_on=(ConnectionError,), backoff=2.0)
    def send_welcome_email(user_id): ...

    @task(unique=True, unique_for=timedelta(minutes=10))   # see docs/calling-tasks.md
    def rebuild_report(account_id): ...

Celery's task options (``bind``, ``max_retries``, ``autoretry_for``, ...) are accepted
too, for code ported from Celery: :func:`~django_tasks.celery_dialect.celery_options`
maps them onto ours, in that one place (the table is in docs/coming-from-celery.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field, fields, replace
from datetime import datetime, timedelta
from inspect import Parameter, iscoroutinefunction, signature
from typing import TYPE_CHECKING, Any

from django.tasks import base as django_base
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from .celery_dialect import (
    MAX_ATTEMPTS_LIMIT,
    NATIVE_DEFAULTS,
    celery_options,
    exception_types,
    seconds,
)
from .celery_options import call_options, task_options
from .context import CANCEL_CHECK_INTERVAL, Request, TaskContext
from .rates import parse_rate

if TYPE_CHECKING:
    from .results import JobResult
    from .workflows.canvas import Signature

__all__ = ["CANCEL_CHECK_INTERVAL", "MAX_ATTEMPTS_LIMIT", "Request", "Task", "TaskContext",
           "aenqueue_many", "call_digest", "celery_options", "enqueue_many"]



class _Unset:
    """The default of an option nobody set: tells "left out" from "set to the default"."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()

#: Longest ``unique_key`` (the column's width).
UNIQUE_KEY_MAX = 255


def call_digest(task_path: str, args: Any, kwargs: dict[str, Any]) -> str:
    """The key of ``unique=True``: SHA-256 (hex) of the task path and the canonical JSON
    of the arguments (keys sorted, no spaces), the same in every process and release."""
    call = json.dumps([task_path, list(args), kwargs], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(call.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(django_base.Task):
    """A task with retry options. Create it with ``@task(...)``, not directly."""

    # The retry options default to UNSET so that Celery's options can tell which of
    # ours were given; __post_init__ replaces UNSET with NATIVE_DEFAULTS.
    #: Total runs allowed, the first one included. 1 means no retries.
    max_attempts: int = UNSET
    #: Exception types that trigger a retry; empty means any ``Exception``.
    retry_on: tuple[type[BaseException], ...] = UNSET
    #: Exception types (subclasses included) never retried, even if ``retry_on``
    #: matches (Celery's ``dont_autoretry_for``); ``context.retry()`` still retries.
    dont_retry_on: tuple[type[BaseException], ...] = UNSET
    #: Seconds before the first retry; doubles with each attempt.
    backoff: float = UNSET
    #: Ceiling for the backoff delay, in seconds.
    backoff_max: float = UNSET
    #: Spread each delay over ``[d/2, d]`` so retries of a burst of failures spread out.
    jitter: bool = UNSET
    #: Seconds ``context.retry()`` without ``countdown`` waits; None: the backoff delay.
    retry_delay: float | None = UNSET
    #: Hard limit in seconds: past it the prefork pool kills the child running the job
    #: and records ``TimeLimitExceeded`` (retried like any error). Not enforced by the
    #: threads and inline pools, which can only warn.
    time_limit: float | None = None
    #: Soft limit in seconds: past it ``SoftTimeLimitExceeded`` is raised inside the task
    #: (prefork pool only) so it can clean up; must be below ``time_limit``. Uses SIGALRM
    #: in the child, so such a task must not use SIGALRM (``signal.alarm``) itself.
    soft_time_limit: float | None = None
    #: Seconds a running job asked to cancel gets to stop by itself (it sees
    #: ``context.is_cancelled()``) before the prefork pool kills it; it ends CANCELLED
    #: either way. None: never killed (then the worker's ``--cancel-grace``, if given,
    #: applies). The threads and inline pools cannot kill: there cancelling is
    #: cooperative only.
    cancel_grace: float | None = None
    #: One active job per task and arguments: while one is ready, scheduled, claimed or
    #: running, enqueueing the same call again returns it instead of a new job.
    unique: bool = False
    #: One active job per this key (shared by every task of the backend), whatever the
    #: arguments; usually set per call: ``.using(unique_key=f"invoice-{pk}")``.
    unique_key: str | None = None
    #: With ``unique``/``unique_key``: a finished job enqueued less than this long ago
    #: (a ``timedelta``, or seconds) also counts. Alone, it implies ``unique=True``.
    unique_for: timedelta | None = None
    #: Celery's ``bind=True``: ``takes_context=True``, and the function's first
    #: parameter (the context) may have any name, as Celery's ``self``.
    bind: bool | None = None
    #: Celery's ``ignore_result=True``: the return value is not stored (status, errors
    #: and times are). A step of a workflow keeps it: the next step receives it.
    ignore_result: bool = False
    #: Celery's ``expires``: seconds (or a ``timedelta``) after the enqueue, or an aware
    #: ``datetime``: a job not started by then is CANCELLED with the error ``Expired``
    #: when a worker takes it, and never runs. Per call: ``apply_async(expires=...)``.
    expires: float | timedelta | datetime | None = None
    #: Celery's ``rate_limit``: at most this many jobs of the task start per second,
    #: minute or hour (``"30/s"``, ``"100/m"``, ``"1000/h"``, or a number per second),
    #: across every worker on every host; jobs over it wait (``django_tasks.rates``).
    rate_limit: str | float | None = None
    #: Exactly-once effects for database work: the task runs in one transaction on its
    #: backend's job database, and its outcome is written in that transaction, fenced by
    #: the job's lease. A crash, a kill or a lost lease commits none of its writes; an
    #: exception rolls them back (then the failure or retry is written as usual). For
    #: short tasks whose effects are writes to that database (docs/reliability.md).
    atomic: bool = False
    # True when the queue was chosen by the call (``using``/``apply_async``): ROUTES
    # then leave it alone. Not a user option.
    queue_from_call: bool = field(default=False, repr=False, compare=False)
    # True when the task was declared with Celery's options: its ``self.retry()`` then
    # decides, as Celery's does, when retries are used up. Kept by copies (a copy's
    # __post_init__ no longer sees the Celery options). Not a user option.
    celery: bool = field(default=False, repr=False, compare=False)

    # Celery's other options: read once by __post_init__ and mapped onto ours by
    # celery_options(); not stored, so a copy (using()) carries only our options.
    max_retries: InitVar[int | None] = UNSET
    default_retry_delay: InitVar[float] = UNSET
    autoretry_for: InitVar[tuple[type[BaseException], ...]] = UNSET
    retry_backoff: InitVar[bool | float] = UNSET
    retry_backoff_max: InitVar[float] = UNSET
    retry_jitter: InitVar[bool] = UNSET
    acks_late: InitVar[bool] = UNSET
    retry_kwargs: InitVar[dict[str, Any]] = UNSET
    dont_autoretry_for: InitVar[tuple[type[BaseException], ...]] = UNSET
    reject_on_worker_lost: InitVar[bool] = UNSET

    def __post_init__(
        self, max_retries: Any, default_retry_delay: Any, autoretry_for: Any,
        retry_backoff: Any, retry_backoff_max: Any, retry_jitter: Any, acks_late: Any,
        retry_kwargs: Any, dont_autoretry_for: Any, reject_on_worker_lost: Any,
    ) -> None:
        expires = self.expires
        if expires is not None and not (
            (seconds(expires) and expires > 0)
            or (isinstance(expires, timedelta) and expires > timedelta(0))
            or (isinstance(expires, datetime) and not timezone.is_naive(expires))
        ):
            raise InvalidTask(
                f"{self.module_path}: expires must be a number of seconds > 0, a positive "
                f"timedelta or an aware datetime; got {expires!r}."
            )
        try:
            parse_rate(self.rate_limit)
        except ValueError as exc:
            raise InvalidTask(f"{self.module_path}: rate_limit: {exc}.") from None
        if not isinstance(self.ignore_result, bool):
            raise InvalidTask(f"{self.module_path}: ignore_result must be True or False; "
                              f"got {self.ignore_result!r}.")
        if self.bind is not None and not isinstance(self.bind, bool):
            raise InvalidTask(f"{self.module_path}: bind must be True or False; "
                              f"got {self.bind!r}.")
        celery = {k: v for k, v in {
            "max_retries": max_retries, "default_retry_delay": default_retry_delay,
            "autoretry_for": autoretry_for, "retry_backoff": retry_backoff,
            "retry_backoff_max": retry_backoff_max, "retry_jitter": retry_jitter,
            "acks_late": acks_late, "retry_kwargs": retry_kwargs,
            "dont_autoretry_for": dont_autoretry_for,
            "reject_on_worker_lost": reject_on_worker_lost,
        }.items() if v is not UNSET}
        if self.bind is not None:
            celery["bind"] = self.bind
        ours = {k: getattr(self, k) for k in NATIVE_DEFAULTS if getattr(self, k) is not UNSET}
        values = celery_options(self.module_path, celery, ours, takes_context=self.takes_context)
        for name, default in NATIVE_DEFAULTS.items():
            object.__setattr__(self, name, values.get(name, ours.get(name, default)))
        if values.get("takes_context"):
            object.__setattr__(self, "takes_context", True)
        if values.get("celery"):
            object.__setattr__(self, "celery", True)
        for name in ("retry_on", "dont_retry_on"):
            types = exception_types(getattr(self, name))
            if types is None:
                raise InvalidTask(
                    f"{self.module_path}: {name} must be a tuple of exception classes, "
                    f"e.g. {name}=(ConnectionError,); got {getattr(self, name)!r}."
                )
            object.__setattr__(self, name, types)
        if (type(self.max_attempts) is not int
                or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT):
            raise InvalidTask(
                f"{self.module_path}: max_attempts must be a whole number >= 1 "
                f"(1 means no retries) and <= {MAX_ATTEMPTS_LIMIT}; got {self.max_attempts!r}."
            )
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise InvalidTask(
                    f"{self.module_path}: {name} must be a number of seconds >= 0; got {value!r}."
                )
        grace = self.cancel_grace
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float)
                                  or not math.isfinite(grace) or grace < 0):
            raise InvalidTask(
                f"{self.module_path}: cancel_grace must be a number of seconds >= 0 (0: kill "
                f"at once), or None to let the task stop by itself; got {grace!r}."
            )
        if self.retry_delay is not None and not seconds(self.retry_delay):
            raise InvalidTask(
                f"{self.module_path}: retry_delay must be a number of seconds >= 0, or None "
                f"for the backoff delay; got {self.retry_delay!r}."
            )
        for name in ("time_limit", "soft_time_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value <= 0
            ):
                raise InvalidTask(
                    f"{self.module_path}: {name} must be a number of seconds > 0, or None for "
                    f"no limit; got {value!r}."
                )
        if (self.time_limit is not None and self.soft_time_limit is not None
                and self.soft_time_limit >= self.time_limit):
            raise InvalidTask(
                f"{self.module_path}: soft_time_limit ({self.soft_time_limit!r}) must be less "
                f"than time_limit ({self.time_limit!r}), or the job is killed before it can "
                "clean up."
            )
        self._check_unique()
        self._check_atomic()
        # Explicit base call: zero-argument super() does not work in slots dataclasses.
        django_base.Task.__post_init__(self)

    def _check_unique(self) -> None:
        if type(self.unique) is not bool:
            raise InvalidTask(f"{self.module_path}: unique must be True or False; got "
                              f"{self.unique!r}.")
        key = self.unique_key
        if key is not None and (not isinstance(key, str) or not key
                                or len(key) > UNIQUE_KEY_MAX):
            got = (f"a string of {len(key)} characters" if isinstance(key, str) and key
                   else f"{key!r} ({type(key).__name__})")
            raise InvalidTask(
                f"{self.module_path}: unique_key must be a non-empty string of at most "
                f"{UNIQUE_KEY_MAX} characters, e.g. unique_key=f\"invoice-{{invoice.pk}}\"; "
                f"got {got}."
            )
        window = self.unique_for
        if window is not None:
            if (isinstance(window, int | float) and not isinstance(window, bool)
                    and math.isfinite(window) and window > 0):
                window = timedelta(seconds=window)
            if not isinstance(window, timedelta) or window <= timedelta(0):
                raise InvalidTask(
                    f"{self.module_path}: unique_for must be a positive timedelta or number "
                    f"of seconds, e.g. unique_for=timedelta(minutes=10); got {window!r}."
                )
            object.__setattr__(self, "unique_for", window)
            if key is None:
                object.__setattr__(self, "unique", True)
        if self.is_unique:
            backend = self.get_backend()  # an unknown alias: Django's InvalidTaskBackend
            if not getattr(backend, "supports_unique", False):
                raise InvalidTask(
                    f"{self.module_path}: unique jobs (unique, unique_key, unique_for) need a "
                    "django_tasks backend, whose database keeps one active job per key; "
                    f"TASKS[{self.backend!r}] is {type(backend).__name__}. Use "
                    "DatabaseBackend or RedisBackend, or drop the unique options."
                )

    def _check_atomic(self) -> None:
        if type(self.atomic) is not bool:
            raise InvalidTask(f"{self.module_path}: atomic must be True or False; got "
                              f"{self.atomic!r}.")
        if not self.atomic:
            return
        if iscoroutinefunction(self.func):
            raise InvalidTask(
                f"{self.module_path}: atomic=True needs a plain function: an async task's "
                "queries run on other threads' connections, outside the transaction its "
                "outcome is written in. Make it a def, or drop atomic."
            )
        backend = self.get_backend()  # an unknown alias: Django's InvalidTaskBackend
        if not getattr(backend, "supports_atomic", False):
            raise InvalidTask(
                f"{self.module_path}: atomic=True writes the outcome in the task's own "
                "transaction, in the job table; TASKS[{!r}] is {}, which has none. Use a "
                "django_tasks backend, or drop atomic.".format(self.backend,
                                                               type(backend).__name__)
            )

    def expires_at(self, enqueued_at: datetime) -> datetime | None:
        """When a job of this task enqueued at ``enqueued_at`` expires (None: never)."""
        expires = self.expires
        if expires is None or isinstance(expires, datetime):
            return expires
        return enqueued_at + (expires if isinstance(expires, timedelta)
                              else timedelta(seconds=expires))

    @property
    def is_unique(self) -> bool:
        """Whether an enqueue of this task may return an existing job."""
        return self.unique or self.unique_key is not None

    def unique_key_for(self, args: Any, kwargs: dict[str, Any]) -> str | None:
        """The key a call of this task holds while active: ``unique_key``, else with
        ``unique`` the digest of the call (:func:`call_digest`), else None."""
        if self.unique_key is not None:
            return self.unique_key
        return call_digest(self.module_path, args, kwargs) if self.unique else None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | timedelta | None = None,
        backend: str | None = None,
        unique_key: str | None = None,
        unique_for: timedelta | float | None = None,
    ) -> Task:
        """A copy with other defaults. ``run_after`` may also be a ``timedelta`` from now.

        ``unique_key`` makes the call unique by that key, ``unique_for`` adds a window
        (see the class's fields); both are checked here.
        """
        if isinstance(run_after, timedelta):
            run_after = timezone.now() + run_after
        if unique_key is not None or unique_for is not None:
            changes: dict[str, Any] = {}
            if unique_key is not None:
                changes["unique_key"] = unique_key
            if unique_for is not None:
                changes["unique_for"] = unique_for
            # Checked against the backend the copy will use.
            base = replace(self, **changes, **({"backend": backend} if backend else {}))
        else:
            base = self
        task = django_base.Task.using(
            base, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        if queue_name is not None:
            object.__setattr__(task, "queue_from_call", True)
        return task

    def enqueue_many(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[JobResult]:
        """Enqueue one job per call, as many :meth:`enqueue` calls would, in one INSERT
        per batch of 1,000; their results, in order.

        Each call is a list or tuple of positional arguments, or a dict of keyword
        arguments::

            send_welcome_email.enqueue_many((user.pk,) for user in users)
            send_welcome_email.enqueue_many({"user_id": pk} for pk in ids)

        Every call is checked first (``Call 3: ...`` names the one refused) and nothing
        is stored unless all are. For both kinds of arguments in one call, or calls of
        several tasks, or options per call, use :func:`enqueue_many`.
        """
        return enqueue_many([(self, call, {}) if type(call) is tuple else (self, *_call(call))
                             for call in calls])

    async def aenqueue_many(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]],
                            ) -> list[JobResult]:
        """:meth:`enqueue_many`, from async code."""
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.enqueue_many, thread_sensitive=True)(list(calls))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step that receives the previous step's result first (Celery's
        partial signature): ``chain(add.s(2, 2), mul.s(4))``."""
        from .workflows.canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step that runs with exactly these arguments (immutable)."""
        from .workflows.canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def delay(self, *args: Any, **kwargs: Any) -> JobResult:
        """Celery's name for :meth:`enqueue`."""
        return self.enqueue(*args, **kwargs)

    def apply_async(self, args: list | tuple | None = None,
                    kwargs: dict[str, Any] | None = None, **options: Any) -> JobResult:
        """Celery's call: enqueue with per-call options.

        ``countdown`` (seconds from now) and ``eta`` (an aware datetime) both set
        ``run_after``; give one or neither. ``queue`` and ``priority`` as in
        :meth:`using`. ``link`` / ``link_error``: signatures enqueued after this job
        succeeds (with its result first) / once it fails for good (with its id first).
        ``expires``: as the task option, for this call.
        Every other Celery option is answered by
        :data:`django_tasks.celery_options.CALL_OPTIONS`: accepted where it asks for what
        we always do, else a ``TypeError`` naming it.
        """
        options = call_options(self.module_path, options)
        countdown, eta = options.get("countdown"), options.get("eta")
        if countdown is not None and eta is not None:
            raise TypeError("apply_async() takes countdown or eta, not both.")
        run_after: datetime | timedelta | None = eta
        if countdown is not None:
            if not seconds(countdown):
                raise TypeError(f"countdown must be a number of seconds >= 0; got {countdown!r}.")
            run_after = timedelta(seconds=countdown)
        task = self.using(queue_name=options.get("queue"), priority=options.get("priority"),
                          run_after=run_after)
        if options.get("expires") is not None:
            task = replace(task, expires=options["expires"])  # checked by __post_init__
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if options.get("link") is None and options.get("link_error") is None:
            return task.enqueue(*args, **kwargs)
        from .workflows.canvas import linked

        return linked(task.s(*args, **kwargs), options.get("link"), options.get("link_error"))


def _call(call: Sequence[Any] | Mapping[str, Any]) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """``(args, kwargs)`` of one call of :meth:`Task.enqueue_many`."""
    t = type(call)
    if t is tuple or t is list:  # the common case first: no abstract class to ask
        return call, {}
    if t is dict or isinstance(call, Mapping):
        return (), call
    if isinstance(call, list | tuple):
        return call, {}
    raise TypeError(f"a call of enqueue_many() is a list or tuple of positional arguments "
                    f"or a dict of keyword arguments; got {call!r}. Nothing was enqueued.")


def enqueue_many(
    calls: Iterable[tuple[django_base.Task, Sequence[Any], Mapping[str, Any]]],
) -> list[JobResult]:
    """Enqueue ``task(*args, **kwargs)`` for each ``(task, args, kwargs)`` of ``calls``,
    in one INSERT per batch of 1,000 (:meth:`ModelBackend.enqueue_many
    <django_tasks.backends.base.ModelBackend.enqueue_many>` says what holds); their
    results, in order. Options per call are the task's: ``task.using(priority=5)``,
    ``task.using(run_after=..., unique_key=...)``. Every task must use one backend. On a
    backend without bulk enqueue (Django's own), each call is enqueued on its own.

        from django_tasks import enqueue_many

        enqueue_many([(send_email, (1,), {"urgent": True}),
                      (send_email.using(priority=10), (2,), {}),
                      (rebuild_report, (), {"account_id": 7})])
    """
    calls = list(calls)
    if not calls:
        return []
    try:
        backend = calls[0][0].get_backend()
    except (TypeError, IndexError, AttributeError):
        raise TypeError(f"enqueue_many() takes (task, args, kwargs) triples; got "
                        f"{calls[0]!r}. Nothing was enqueued.") from None
    if not hasattr(backend, "enqueue_many"):
        return [task.enqueue(*args, **kwargs) for task, args, kwargs in calls]
    return backend.enqueue_many(calls)


async def aenqueue_many(
    calls: Iterable[tuple[django_base.Task, Sequence[Any], Mapping[str, Any]]],
) -> list[JobResult]:
    """:func:`enqueue_many`, from async code."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(enqueue_many, thread_sensitive=True)(list(calls))


_dataclass_init = Task.__init__


def _init(self: Task, **kwargs: Any) -> None:
    # Celery's options (queue=, name=, serializer=, ...) are answered before the
    # dataclass sees them: renamed, accepted or refused in one line (celery_options).
    func = kwargs.get("func")
    path = f"{func.__module__}.{func.__qualname__}" if func is not None else "task"
    # dataclasses.replace() passes the InitVars' UNSET defaults back in: not options.
    given = {k: v for k, v in kwargs.items() if v is not UNSET}
    _dataclass_init(self, **task_options(path, given))


Task.__init__ = _init  # type: ignore[method-assign]


def for_django_checks(task: django_base.Task) -> django_base.Task:
    """``task`` as Django's ``validate_task`` should see it.

    Django requires a ``takes_context`` task's first parameter to be named ``context``;
    Celery's bound tasks call it ``self``. For a ``bind=True`` task this checks that
    there is a first positional parameter and returns a copy (made without running
    ``__post_init__`` again) that Django does not check for its name.
    """
    if not getattr(task, "bind", None):
        return task
    try:
        params = list(signature(task.func).parameters.values())
    except (TypeError, ValueError):
        params = []
    if not params or params[0].kind not in (Parameter.POSITIONAL_ONLY,
                                            Parameter.POSITIONAL_OR_KEYWORD):
        raise InvalidTask(
            f"{task.module_path}: bind=True passes the context as the first argument, but "
            "the function has no first positional parameter: add one (Celery calls it self)."
        )
    view = object.__new__(type(task))
    for f in fields(task):
        object.__setattr__(view, f.name, getattr(task, f.name))
    object.__setattr__(view, "takes_context", False)
    return view
