"""Every option of Celery's ``@app.task`` and ``apply_async``, with its answer here.

Code ported from Celery passes Celery's options; each one gets an answer, kept in the
two tables below (docs/coming-from-celery.md prints them, and a test checks that the
page and the tables agree):

- ``same``: ours has the same name and meaning;
- ``mapped``: ours has another name (``queue`` is ``queue_name``); retry options are
  mapped by :func:`django_tasks.celery_dialect.celery_options`;
- ``built in``: a capability of ours, under Celery's name (``ignore_result``, ``link``);
- ``accepted``: what it asks for is how we always work, so the values that ask for it
  are accepted and change nothing; the others are refused;
- ``refused``: an error of one line that names the option, says why and what to use;

:func:`task_options` translates the decorator's keyword arguments before our
``Task`` sees them; :func:`call_options` those of ``apply_async``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.tasks import DEFAULT_TASK_QUEUE_NAME
from django.tasks.exceptions import InvalidTask

__all__ = ["CALL_OPTIONS", "STATUSES", "TASK_OPTIONS", "Answer", "call_options",
           "task_options"]

STATUSES = ("same", "mapped", "built in", "accepted", "refused")


def _bool(value: Any, path: str) -> bool:
    return isinstance(value, bool)


def _true(value: Any, path: str) -> bool:
    return value is True


def _json(value: Any, path: str) -> bool:
    return value == "json"


def _own_path(value: Any, path: str) -> bool:
    return value == path


def _positive_int(value: Any, path: str) -> bool:
    return type(value) is int and value > 0


def _anything(value: Any, path: str) -> bool:
    return True


@dataclass(frozen=True)
class Answer:
    """What one Celery option is here."""

    status: str
    #: One line: the docs' table cell, and the reason an error gives.
    note: str
    #: ``mapped``: our option's name.
    ours: str = ""
    #: ``accepted``: the values that ask for what we always do (the others are refused).
    accepts: Callable[[Any, str], bool] = _anything
    #: ``accepted``: the values accepted, as the error names them.
    values: str = ""


_RETRY = "mapped onto our retry options: see the table of retry options"

#: The options of Celery's ``@app.task`` / ``@shared_task`` (its ``Task`` attributes).
TASK_OPTIONS: dict[str, Answer] = {
    "name": Answer("accepted", "only the task's own dotted path (Celery's default name): jobs "
                   "are stored, routed and scheduled by it", accepts=_own_path,
                   values="the task's dotted path"),
    "queue": Answer("mapped", "the queue its jobs go to", ours="queue_name"),
    "priority": Answer("same", "-100..100, higher first (Celery's depends on the broker)"),
    "time_limit": Answer("same", "seconds; the prefork pool kills the job past it"),
    "soft_time_limit": Answer("same", "seconds; SoftTimeLimitExceeded is raised in the task"),
    "backend": Answer("same", "Django's meaning: the TASKS alias the task enqueues through "
                      "(results are always the job table)"),
    "bind": Answer("mapped", "the context is passed first, as self", ours="takes_context"),
    "max_retries": Answer("mapped", _RETRY, ours="max_attempts"),
    "default_retry_delay": Answer("mapped", _RETRY, ours="retry_delay"),
    "autoretry_for": Answer("mapped", _RETRY, ours="retry_on"),
    "dont_autoretry_for": Answer("mapped", _RETRY, ours="dont_retry_on"),
    "retry_kwargs": Answer("mapped", _RETRY, ours="max_attempts, backoff"),
    "retry_backoff": Answer("mapped", _RETRY, ours="backoff"),
    "retry_backoff_max": Answer("mapped", _RETRY, ours="backoff_max"),
    "retry_jitter": Answer("mapped", _RETRY, ours="jitter"),
    "reject_on_worker_lost": Answer("mapped", _RETRY, ours="retry_on"),
    "acks_late": Answer("accepted", "always on: a job is acknowledged only once its outcome "
                        "is written", accepts=_true, values="True"),
    "ignore_result": Answer("built in", "the return value is not stored (status, errors "
                            "and times are)"),
    "store_errors_even_if_ignored": Answer(
        "accepted", "errors are always stored", accepts=_bool, values="True or False"),
    "track_started": Answer("accepted", "a running job is always RUNNING, with its start "
                            "time", accepts=_bool, values="True or False"),
    "acks_on_failure_or_timeout": Answer(
        "accepted", "a failed or timed-out job is recorded FAILED (or retried), never "
        "redelivered as new", accepts=_true, values="True"),
    "typing": Answer("accepted", "every call is checked against the function's signature "
                     "before it is stored", accepts=_true, values="True"),
    "serializer": Answer("accepted", "arguments and results are JSON, stored in the job row",
                         accepts=_json, values="'json'"),
    "shared": Answer("accepted", "every task is shared: there is no app instance to bind "
                     "to", accepts=_true, values="True"),
    "lazy": Answer("accepted", "tasks are plain objects made at import", accepts=_bool,
                   values="True or False"),
    "send_events": Answer("accepted", "the job table is the event record the admin reads",
                          accepts=_bool, values="True or False"),
    "trail": Answer("accepted", "workflow links are kept in the job rows", accepts=_bool,
                    values="True or False"),
    "resultrepr_maxsize": Answer("accepted", "results are stored whole, as JSON",
                                 accepts=_positive_int, values="a whole number > 0"),
    "compression": Answer("refused", "brokers carry only job ids; arguments live in the job "
                          "row (PostgreSQL compresses large values itself). Remove it"),
    "throws": Answer("refused", "every failure is recorded with its traceback; for errors you "
                     "expect, catch them in the task, or list them in dont_retry_on so they "
                     "are not retried"),
    "base": Answer("refused", "a Task subclass with hooks (on_success, on_failure, "
                   "after_return) is not supported: connect to django.tasks.signals "
                   "(task_started, task_finished) instead"),
    "store_eager_result": Answer("refused", "there is no eager mode: use Django's "
                                 "ImmediateBackend or django_tasks.testing in tests"),
    "pydantic": Answer("refused", "arguments are JSON values; validate them inside the task"),
    "rate_limit": Answer("built in", "'30/s', '100/m', '1000/h': held across every worker on "
                         "every host (Celery's is per worker); jobs over it wait"),
    "expires": Answer("built in", "seconds, timedelta or datetime: a job not started by "
                      "then ends CANCELLED (Expired) without running"),
}

#: The options of Celery's ``task.apply_async(args, kwargs, **options)``.
CALL_OPTIONS: dict[str, Answer] = {
    "countdown": Answer("same", "seconds from now before it may run"),
    "eta": Answer("same", "an aware datetime before which it does not run"),
    "queue": Answer("same", "the queue this job goes to"),
    "priority": Answer("same", "-100..100, higher first"),
    "link": Answer("built in", "a signature (or list) enqueued after this job succeeds, with "
                   "its result as first argument: a chain of one"),
    "link_error": Answer("built in", "a signature (or list) enqueued once if this job fails "
                         "for good, with the failed job's id as first argument"),
    "serializer": Answer("accepted", "arguments and results are JSON", accepts=_json,
                         values="'json'"),
    "retry": Answer("accepted", "an enqueue is an insert in your transaction; after a broker "
                    "outage the ready rows are published again", accepts=_bool,
                    values="True or False"),
    "retry_policy": Answer("accepted", "nothing to retry: see retry",
                           accepts=lambda v, p: isinstance(v, Mapping), values="a dict"),
    "add_to_parent": Answer("accepted", "jobs are never children of the job that enqueued "
                            "them; workflows say what follows what", accepts=_bool,
                            values="True or False"),
    "delivery_mode": Answer("accepted", "messages are always persistent",
                            accepts=lambda v, p: v in (2, "persistent"),
                            values="2 or 'persistent'"),
    "exchange": Answer("refused", "jobs go to queues, not exchanges: pass queue="),
    "routing_key": Answer("refused", "jobs go to queues, not routing keys: pass queue=, or "
                          "ROUTES in TASKS"),
    "compression": Answer("refused", "brokers carry only job ids; arguments live in the job "
                          "row. Remove it"),
    "headers": Answer("refused", "a job carries only its arguments: pass the values as "
                      "keyword arguments"),
    "task_id": Answer("refused", "ids are made by the backend (UUIDv7, in time order): read "
                      "result.id; for one job per key pass unique_key to using()"),
    "ignore_result": Answer("refused", "set ignore_result=True on the task"),
    "time_limit": Answer("refused", "set time_limit on the task"),
    "soft_time_limit": Answer("refused", "set soft_time_limit on the task"),
    "shadow": Answer("refused", "a job is named by its task's dotted path"),
    "expires": Answer("built in", "as the task option, for this call"),
    "producer": Answer("refused", "enqueue writes through the task's backend: pass "
                       "nothing"),
    "connection": Answer("refused", "enqueue writes through the task's backend: pass "
                         "nothing"),
    "publisher": Answer("refused", "enqueue writes through the task's backend: pass "
                        "nothing"),
    "router": Answer("refused", "routing is ROUTES in TASKS, or queue= per call"),
}


def _refusal(where: str, option: str, answer: Answer, value: Any) -> str:
    if answer.status == "accepted":
        return (f"{where}{option}={value!r} is not available: {answer.note}; it takes "
                f"{answer.values}, or leave it out.")
    return f"{where}{option}= is not supported: {answer.note}."


#: Celery's options our ``Task`` checks and maps itself (celery_dialect.celery_options).
_TASK_CHECKS = {"bind", "acks_late", "max_retries", "default_retry_delay", "autoretry_for",
                "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max",
                "retry_jitter", "reject_on_worker_lost"}


def task_options(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (the decorator's keyword arguments, ours and Celery's) with Celery's
    answered: ``queue`` renamed, ``accepted`` ones checked and dropped, ``refused``
    ones an ``InvalidTask`` of one line. The retry options and ``bind`` pass through to
    :func:`~django_tasks.celery_dialect.celery_options`; unknown names too (Python's
    ``TypeError`` then names them)."""
    out = dict(options)
    for option, value in options.items():
        answer = TASK_OPTIONS.get(option)
        if (answer is None or answer.status in ("same", "built in")
                or option in _TASK_CHECKS):
            continue
        if answer.status == "mapped":
            if answer.ours == "queue_name":
                given = out.get("queue_name", DEFAULT_TASK_QUEUE_NAME)
                if given not in (DEFAULT_TASK_QUEUE_NAME, value):
                    raise InvalidTask(
                        f"{path}: queue={value!r} (Celery's option) and queue_name={given!r} "
                        "(ours) set the same thing; pass one of them.")
                out["queue_name"] = out.pop("queue")
            continue
        if answer.status == "accepted" and answer.accepts(value, path):
            del out[option]
            continue
        raise InvalidTask(_refusal(f"{path}: ", option, answer, value))
    return out


def call_options(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """``apply_async``'s options, answered: those it acts on (``same`` and ``built in``)
    returned; ``accepted`` ones checked and dropped; others a ``TypeError`` of one line
    naming the option."""
    out: dict[str, Any] = {}
    where = f"{path}.apply_async(): "
    for option, value in options.items():
        answer = CALL_OPTIONS.get(option)
        if answer is None:
            raise TypeError(f"{where}unknown option {option}= (not one of Celery's calling "
                        "options either; docs/coming-from-celery.md lists every one).")
        if answer.status in ("same", "built in"):
            out[option] = value
        elif not (answer.status == "accepted" and answer.accepts(value, path)):
            raise TypeError(_refusal(where, option, answer, value))
    return out
