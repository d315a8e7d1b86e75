"""Celery's task options, mapped onto ours in one place.

``@task(bind=True, max_retries=5, autoretry_for=(ConnectionError,), retry_backoff=True)``
runs as in Celery: :func:`celery_options` turns Celery's options into ours
(``max_attempts``, ``retry_on``, ``backoff``, ...), refusing a Celery option given with
ours for the same thing, and values that cannot mean what Celery means. The table is in
docs/coming-from-celery.md; ``TaskContext.retry`` holds Celery's ``self.retry()`` rule
for the last attempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from inspect import isclass
from typing import Any

from django.tasks.exceptions import InvalidTask

from .exceptions import Retry, WorkerLost

__all__ = ["CELERY_COUNTERPARTS", "MAX_ATTEMPTS_LIMIT", "NATIVE_DEFAULTS", "celery_options",
           "exception_types", "seconds"]

#: The largest ``max_attempts`` the job table stores (a PostgreSQL ``integer``). Celery's
#: ``max_retries=None`` ("retry forever") maps to it: with any delay of a second or more,
#: that is longer than the deployment will live.
MAX_ATTEMPTS_LIMIT = 2**31 - 1

#: Our retry options and their values when neither they nor a Celery option are given.
NATIVE_DEFAULTS: dict[str, Any] = {
    "max_attempts": 1, "retry_on": (), "dont_retry_on": (), "backoff": 1.0,
    "backoff_max": 3600.0, "jitter": True, "retry_delay": None,
}

#: Celery's option -> ours, for options that set the same thing: giving both is an error.
CELERY_COUNTERPARTS = {
    "max_retries": "max_attempts",
    "autoretry_for": "retry_on",
    "dont_autoretry_for": "dont_retry_on",
    "retry_backoff": "backoff",
    "retry_backoff_max": "backoff_max",
    "retry_jitter": "jitter",
    "default_retry_delay": "retry_delay",
}

_PAIR_FIXES = {
    "max_retries": lambda v: (
        f"max_retries={v!r} is max_attempts={_attempts(v)!r} (attempts include the first run)"
    ),
    "autoretry_for": lambda v: f"autoretry_for={v!r} is retry_on={v!r}",
    "dont_autoretry_for": lambda v: f"dont_autoretry_for={v!r} is dont_retry_on={v!r}",
    "retry_backoff": lambda v: (
        "retry_backoff=True is backoff=1, retry_backoff=N is backoff=N" if v is not False else
        "retry_backoff=False is a fixed delay: backoff=backoff_max=the delay, jitter=False"
    ),
    "retry_backoff_max": lambda v: f"retry_backoff_max={v!r} is backoff_max={v!r}",
    "retry_jitter": lambda v: f"retry_jitter={v!r} is jitter={v!r}",
    "default_retry_delay": lambda v: f"default_retry_delay={v!r} is retry_delay={v!r}",
}

#: The keys of Celery's ``retry_kwargs`` (what autoretries pass to ``self.retry()``)
#: that mean something here; Celery's others (``exc``, ``eta``, ``args``, ``kwargs``,
#: ``throw``, ``queue``, ...) do not fit a decorator-wide setting or our model.
RETRY_KWARGS = ("max_retries", "countdown")


def _attempts(max_retries: int | None) -> int:
    return MAX_ATTEMPTS_LIMIT if max_retries is None else max_retries + 1


def seconds(value: Any) -> bool:
    """Whether ``value`` is a number of seconds (finite, >= 0; not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and value >= 0)


def exception_types(value: Any) -> tuple[type[BaseException], ...] | None:
    """``value`` (an exception class, or a tuple or list of them) as a tuple; None if
    it is anything else."""
    if isclass(value):
        value = (value,)
    if not isinstance(value, tuple | list) or not all(
        isclass(t) and issubclass(t, BaseException) for t in value
    ):
        return None
    return tuple(value)


def celery_options(
    task_path: str, celery: dict[str, Any], ours: dict[str, Any], *, takes_context: bool,
) -> dict[str, Any]:
    """Our option values for the Celery options in ``celery``: the one place they map.

    ``celery`` holds the Celery options given, ``ours`` the retry options of ours given.
    A task that uses any Celery option (``acks_late`` aside) behaves as in Celery: only
    ``self.retry()`` and ``autoretry_for`` retry, ``max_retries`` defaults to 3, a retry
    without countdown waits ``default_retry_delay`` (180 s), fixed unless
    ``retry_backoff``. What it leaves out takes Celery's default, unless one of our
    options gives it. A Celery option and ours for the same thing is an ``InvalidTask``,
    as is ``bind=False`` with ``takes_context=True``, and ``acks_late=False``. The
    result has ``"celery": True`` (the task then gets Celery's ``self.retry()``, see
    :meth:`TaskContext.retry`), and ``"takes_context"`` for ``bind=True``.
    """
    def invalid(message: str) -> InvalidTask:
        return InvalidTask(f"{task_path}: {message}")

    for theirs, value in celery.items():
        mine = CELERY_COUNTERPARTS.get(theirs)
        if mine in ours:
            raise invalid(
                f"{theirs}={value!r} (Celery's option) and {mine}={ours[mine]!r} (ours) set the "
                f"same thing; pass one of them: {_PAIR_FIXES[theirs](value)}."
            )
    if celery.get("bind") is False and takes_context:
        raise invalid(
            "bind=False and takes_context=True contradict each other (bind=True is Celery's "
            "takes_context=True); pass one of them."
        )
    if "acks_late" in celery and celery["acks_late"] is not True:
        raise invalid(
            f"acks_late={celery['acks_late']!r} is not available: a job is acknowledged only "
            "when its outcome is written, so acks_late=True is always on (a job whose worker "
            "dies is not lost). Remove the option, or pass acks_late=True."
        )
    given = {k: v for k, v in celery.items() if k != "acks_late"}
    if given.get("bind") is False:
        del given["bind"]
    if not given:
        return {}

    retry_kwargs = _retry_kwargs(given, ours, invalid)
    name = "retry_kwargs['max_retries']" if "max_retries" in retry_kwargs else "max_retries"
    max_retries = retry_kwargs.get("max_retries", given.get("max_retries", 3))
    if max_retries is not None and (type(max_retries) is not int or not
                                    0 <= max_retries < MAX_ATTEMPTS_LIMIT):
        raise invalid(f"{name} must be a whole number >= 0, or None to retry without "
                      f"limit; got {max_retries!r}.")
    delay = given.get("default_retry_delay", 180)
    if not seconds(delay):
        raise invalid(f"default_retry_delay must be a number of seconds >= 0; got {delay!r}.")
    exponential = given.get("retry_backoff", False)
    if not (exponential is True or exponential is False or seconds(exponential)):
        raise invalid(f"retry_backoff must be True (1 s, doubling), False (a fixed "
                      f"default_retry_delay) or a number of seconds; got {exponential!r}.")
    cap = given.get("retry_backoff_max", 600)
    if not seconds(cap):
        raise invalid(f"retry_backoff_max must be a number of seconds >= 0; got {cap!r}.")
    jitter = given.get("retry_jitter", True)
    if not isinstance(jitter, bool):
        raise invalid(f"retry_jitter must be True or False; got {jitter!r}.")
    autoretry_for = exception_types(given.get("autoretry_for", ()))
    if autoretry_for is None:
        raise invalid(f"autoretry_for must be a tuple of exception classes, e.g. "
                      f"autoretry_for=(ConnectionError,); got {given['autoretry_for']!r}.")
    dont = _dont_autoretry_for(given, ours, invalid)
    retry_on = autoretry_for or (Retry,)  # Retry alone: only self.retry() retries
    if _reject_on_worker_lost(given, ours, dont, invalid) and not issubclass(WorkerLost,
                                                                             retry_on):
        retry_on = (*retry_on, WorkerLost)

    mapped: dict[str, Any] = {
        "max_attempts": _attempts(max_retries), "retry_on": retry_on,
        "retry_delay": float(delay), "celery": True,
    }
    if dont:
        mapped["dont_retry_on"] = dont
    # An autoretry waits: with retry_backoff, base * 2 ** retries, capped, jittered (0:
    # as False; it wins over retry_kwargs' countdown, as in Celery); else
    # retry_kwargs' countdown, else default_retry_delay, fixed, as self.retry() does.
    if exponential:
        mapped.update(backoff=1.0 if exponential is True else float(exponential),
                      backoff_max=float(cap), jitter=jitter)
    else:
        fixed = float(retry_kwargs.get("countdown", delay))
        mapped.update(backoff=fixed, backoff_max=fixed, jitter=False)
    if given.get("bind"):
        mapped["takes_context"] = True
    # Our options, where given, win over what Celery's defaults filled in.
    return {k: v for k, v in mapped.items() if k not in ours}


def _retry_kwargs(given: dict[str, Any], ours: dict[str, Any],
                  invalid: Callable[[str], InvalidTask]) -> dict[str, Any]:
    """Celery's ``retry_kwargs``, checked: the keys that apply, None values dropped."""
    value = given.get("retry_kwargs", {})
    if not isinstance(value, dict):
        raise invalid(f"retry_kwargs must be a dict, e.g. retry_kwargs={{'max_retries': 5}}; "
                      f"got {value!r}.")
    for key in value:
        if key not in RETRY_KWARGS:
            raise invalid(
                f"retry_kwargs[{key!r}] is not supported: retry_kwargs takes "
                f"{' and '.join(map(repr, RETRY_KWARGS))} (what an autoretry waits is "
                "countdown or retry_backoff; the limit is max_retries)."
            )
    # None is Celery's "the task's own max_retries": the same as leaving it out.
    value = {k: v for k, v in value.items() if v is not None}
    if value and "autoretry_for" not in given and "retry_on" not in ours:
        raise invalid(f"retry_kwargs={value!r} applies to autoretries only: add "
                      "autoretry_for=(...), or remove it (Celery ignores it too).")
    if "max_retries" in value:
        limit = value["max_retries"]
        if "max_retries" in given:
            raise invalid(
                f"retry_kwargs={{'max_retries': {limit!r}}} and max_retries="
                f"{given['max_retries']!r} set the same limit (here one limit covers "
                "self.retry() and autoretries); pass one of them."
            )
        if "max_attempts" in ours:
            raise invalid(
                f"retry_kwargs={{'max_retries': {limit!r}}} (Celery's option) and "
                f"max_attempts={ours['max_attempts']!r} (ours) set the same thing; pass one "
                f"of them: {_PAIR_FIXES['max_retries'](limit)}."
            )
    if "countdown" in value:
        countdown = value["countdown"]
        if not seconds(countdown):
            raise invalid(f"retry_kwargs['countdown'] must be a number of seconds >= 0; "
                          f"got {countdown!r}.")
        for mine in ("backoff", "backoff_max", "jitter"):
            if mine in ours:
                raise invalid(
                    f"retry_kwargs={{'countdown': {countdown!r}}} (Celery's option) and "
                    f"{mine}={ours[mine]!r} (ours) set the same thing; pass one of them: "
                    f"countdown={countdown!r} is backoff=backoff_max={countdown!r}, "
                    "jitter=False."
                )
    return value


def _dont_autoretry_for(given: dict[str, Any], ours: dict[str, Any],
                        invalid: Callable[[str], InvalidTask]) -> tuple[type[BaseException], ...]:
    """Celery's ``dont_autoretry_for``, checked."""
    value = given.get("dont_autoretry_for", ())
    dont = exception_types(value)
    if dont is None:
        raise invalid(f"dont_autoretry_for must be a tuple of exception classes, e.g. "
                      f"dont_autoretry_for=(ValueError,); got {value!r}.")
    if dont and "autoretry_for" not in given and "retry_on" not in ours:
        raise invalid(f"dont_autoretry_for={value!r} only narrows autoretry_for: add "
                      "autoretry_for=(...), or remove it (Celery ignores it too).")
    return dont


def _reject_on_worker_lost(given: dict[str, Any], ours: dict[str, Any],
                           dont: tuple[type[BaseException], ...],
                           invalid: Callable[[str], InvalidTask]) -> bool:
    """Celery's ``reject_on_worker_lost``, checked: True runs a lost worker's job again."""
    value = given.get("reject_on_worker_lost", False)
    if not isinstance(value, bool):
        raise invalid(f"reject_on_worker_lost must be True or False; got {value!r}.")
    if value and "retry_on" in ours:
        raise invalid(
            f"reject_on_worker_lost=True (Celery's option) and retry_on={ours['retry_on']!r} "
            "(ours) set the same thing; pass one of them: reject_on_worker_lost=True is "
            "WorkerLost listed in retry_on."
        )
    if value and issubclass(WorkerLost, dont):
        raise invalid(
            f"reject_on_worker_lost=True and dont_autoretry_for={dont!r} contradict each "
            "other (dont_autoretry_for covers django_tasks.WorkerLost); pass one of them."
        )
    return value
