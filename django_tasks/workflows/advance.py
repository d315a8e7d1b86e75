"""The workflow outcome hook: what a finished job releases or fails downstream.

Registered with :func:`django_tasks.jobs.store.register_outcome_hook` (``linked_only``):
it runs in the transaction that writes an outcome, so a chain's next step, a chord's
counter and an error callback happen exactly once or not at all. How workflows are
stored is in :mod:`django_tasks.workflows.canvas`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from .canvas import Signature, Tree, tree_ids

logger = logging.getLogger("django_tasks.worker")

__all__ = ["advance"]


def advance(store: Any, applied: list[Any]) -> None:
    """Outcome hook: move the workflows of the jobs just finished (module docstring).

    Runs inside the transaction that wrote ``applied``; does nothing for jobs outside
    a workflow (their ``links`` is None), which is almost every job.
    """
    from ..states import CANCELLED, FAILED, SUCCESSFUL

    done = [a for a in applied if a.links and a.status in (SUCCESSFUL, FAILED, CANCELLED)]
    if not done:
        return
    now = store.now()
    succeeded: Counter[str] = Counter()
    failed: list[Any] = []
    for a in done:
        if a.status == SUCCESSFUL:
            succeeded.update(a.links.get("dependents", ()))
        else:
            failed.append(a)
    ready = [d for d, n in sorted(succeeded.items()) if _decrement(store, d, n, now)]
    if ready:
        store.republish(ready)
    for a in failed:
        _fail_downstream(store, a.id, a.task_path, a.links, now,
                         how="was cancelled" if a.status == CANCELLED else "failed")


def _decrement(store: Any, job_id: str, n: int, now: datetime) -> bool:
    """Count ``n`` inputs of ``job_id`` as done; if it has them all, make it READY."""
    from ..models import Job

    step = store.decrement_waiting(job_id, n)
    if step is None or step.waiting_on != 0:
        return False
    links, args = step.links, step.args
    if links.get("mode", "value") == "value":
        args = [_gather(store, links.get("inputs")), *args]
    countdown = links.get("countdown") or 0.0
    Job.objects.using(store.database).filter(pk=job_id, status="WAITING").update(
        status="READY", args=args, available_at=now + timedelta(seconds=countdown))
    return True


def _gather(store: Any, inputs: Tree) -> Any:
    """The results an output tree names, in its shape."""
    from ..models import Job

    ids = list(tree_ids(inputs))
    values = dict(Job.objects.using(store.database).filter(pk__in=ids)
                  .values_list("id", "return_value"))
    by_id = {str(k): v for k, v in values.items()}

    def build(tree: Tree) -> Any:
        return [build(t) for t in tree] if isinstance(tree, list) else by_id.get(tree)

    return build(inputs)


def _fail_downstream(store: Any, failed_id: str, task_path: str, links: dict[str, Any],
                     now: datetime, how: str = "failed") -> None:
    """Fail what waits for ``failed_id`` (transitively) and enqueue error callbacks."""
    error = {
        "exception_class_path": "django_tasks.exceptions.UpstreamFailed",
        "message": f"job {failed_id} ({task_path}) {how}, so this workflow step did not run",
        "traceback": "", "attempt": 0, "worker_id": "", "occurred_at": now.isoformat(),
    }
    _enqueue_errbacks(links.get("errbacks", ()), failed_id)
    pending = list(links.get("dependents", ()))
    while pending:
        job_id = pending.pop()
        step = store.fail_waiting(job_id, error, now)
        if step is None:
            continue  # not waiting (already failed by another branch, or cancelled)
        down = step.links or {}
        _enqueue_errbacks(down.get("errbacks", ()), failed_id)
        pending.extend(down.get("dependents", ()))


def _enqueue_errbacks(errbacks: Iterable[dict[str, Any]], failed_id: str) -> None:
    """Enqueue error callbacks (in the hook's transaction). One that cannot be enqueued
    (its task removed in a deploy, say) is logged: it must not keep the failure from
    being written, or the rest of the workflow from failing."""
    from django.db import DatabaseError

    from ..jobs.policy import resolve_task

    for spec in errbacks:
        try:
            task = resolve_task(spec["task"])
            sig = Signature(task, tuple(spec.get("args", ())), dict(spec.get("kwargs", {})),
                            spec.get("immutable", False), dict(spec.get("options", {})))
            with transaction.atomic(using=task.get_backend().store.database):
                sig.enqueue() if sig.immutable else sig.enqueue(failed_id)
        except DatabaseError:
            raise
        except Exception:
            logger.exception("Could not enqueue the error callback %s for failed job %s",
                             spec.get("task"), failed_id)
