"""Helpers for your own tests: run the jobs your code enqueued, here and now.

With the database backend a job is a row in your database. :func:`drain` runs every
job that is ready with a real worker loop (the worker's ``inline`` pool) on the calling
thread and its database connections, so it sees the jobs enqueued inside a test's
transaction, and patches, settings overrides and ``mail.outbox`` of the test apply to
the jobs::

    from django_tasks.testing import drain

    @pytest.mark.django_db
    def test_signup_sends_a_welcome_email(client, mailoutbox):
        client.post("/signup/", {"email": "ada@example.com"})
        assert drain() == 1
        assert len(mailoutbox) == 1

Time is a parameter: ``drain(now=timezone.now() + timedelta(minutes=5))`` also runs
the jobs deferred, and the retries due, within the next five minutes.

Both helpers drive :class:`~django_tasks.worker.TaskWorker` through its public methods
only (``exchange``, ``dispatch``, ``stop``, ``shutdown`` and the ``claimed`` /
``completed`` counters). Each call uses a new worker whose id starts with
``testing-`` (it shows in ``result.worker_ids``); the worker is not registered in the
worker table. See docs/testing.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from .exceptions import TasksError
from .worker import TaskWorker

__all__ = ["DEFAULT_MAX_JOBS", "DrainLimitExceeded", "drain", "run_once"]

#: The most attempts one :func:`drain` runs unless told otherwise (and the most jobs
#: one :func:`run_once` claims): far more than a test needs, few enough that a task
#: which enqueues itself forever fails its test instead of hanging it (10,000 attempts
#: took 11 s on SQLite and 39 s on a local PostgreSQL: one round trip per job).
DEFAULT_MAX_JOBS = 10_000


class DrainLimitExceeded(TasksError):
    """drain() ran max_jobs attempts and more jobs were still ready."""


def drain(
    *,
    backend: str = "default",
    queues: Sequence[str] | None = None,
    now: datetime | None = None,
    max_jobs: int | None = None,
) -> int:
    """Run the jobs ready at ``now`` until none is; return how many attempts ran.

    Guarantees:

    - Jobs run on this thread, one at a time in the order a worker claims them
      (priority, then due time), each claimed, started and finished by the worker
      loop on the backend's database connection: inside the test's transaction when
      there is one. Every attempt's outcome is written before this returns.
    - Jobs enqueued by the jobs it runs, and retries, run too once they are due.
    - ``now=None`` reads the clock at every step, as a worker does (the database's on
      PostgreSQL). A given ``now`` pins it: jobs due later than ``now`` (``run_after``
      in the future, a retry's backoff) stay ``READY``; move ``now`` past them to run
      them.
    - At most ``max_jobs`` attempts run (default :data:`DEFAULT_MAX_JOBS`). If a job
      is still ready after that, :class:`DrainLimitExceeded` is raised, with every
      outcome written and that job given back ``READY``, untouched.
    - When it returns or raises ``DrainLimitExceeded``, no job is left ``CLAIMED`` or
      ``RUNNING`` by this call.

    Only ``queues`` of the backend are served (default: all of its ``QUEUES``). Time
    limits are not enforced (the inline pool cannot interrupt a call; it logs a
    warning). A database error, or a bug in the worker, propagates as is.
    """
    if max_jobs is None:
        max_jobs = DEFAULT_MAX_JOBS
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 0:
        raise ValueError(f"max_jobs must be a whole number >= 0; got {max_jobs!r}.")
    # One slot, nothing prefetched: the worker holds at most one job, so the limit is
    # exact, and it may claim one job past the limit: that job tells us more was ready.
    worker = _worker(backend, queues, concurrency=1, max_tasks=max_jobs + 1)
    ran = 0
    try:
        while True:
            claimed, completed = worker.claimed, worker.completed
            worker.exchange(now)  # write the last outcome, claim the next job
            if worker.claimed > max_jobs:
                raise DrainLimitExceeded(
                    f"drain() ran max_jobs={max_jobs} attempts on queue(s) "
                    f"{', '.join(worker.queues)} of backend {backend!r} and jobs are still "
                    "ready: a task that enqueues itself, or retries without end, never lets "
                    "the queue empty. Pass a larger max_jobs if that many are expected, or "
                    "step with run_once()."
                )
            quiet = worker.claimed == claimed and worker.completed == completed
            if quiet and worker.completed == worker.claimed:
                return ran  # nothing held, nothing unwritten, nothing ready at `now`
            started = worker.dispatch(now)  # run the claimed job to its end, here
            if quiet and not started:  # would repeat forever: say so instead
                raise RuntimeError(
                    f"drain(): worker {worker.worker_id} holds "
                    f"{worker.claimed - worker.completed} job(s) it neither starts nor "
                    "finishes; please report this."
                )
            ran += started
            worker.dispatch(now)  # collect its outcome for the next round trip
    finally:
        worker.shutdown()


def run_once(
    *,
    backend: str = "default",
    queues: Sequence[str] | None = None,
    now: datetime | None = None,
) -> int:
    """One worker step: claim the jobs ready at ``now``, run them, write their outcomes.

    Returns how many jobs ran. Jobs those jobs enqueue and retries they schedule stay
    ``READY`` for the next call, so a test can look at the rows between steps. At most
    :data:`DEFAULT_MAX_JOBS` jobs are claimed in one step; ``now`` works as in
    :func:`drain`. When it returns, no job is left ``CLAIMED`` or ``RUNNING`` by this
    call.
    """
    worker = _worker(backend, queues, concurrency=DEFAULT_MAX_JOBS)
    try:
        worker.exchange(now)  # claim
        ran = worker.dispatch(now)  # run every job claimed (one slot each)
        worker.stop()  # from here on the worker starts and claims nothing
        worker.dispatch(now)  # collect the outcomes
        worker.exchange(now)  # write them
        return ran
    finally:
        worker.shutdown()


def _worker(backend: str, queues: Sequence[str] | None, *, concurrency: int,
            max_tasks: int | None = None) -> TaskWorker:
    if isinstance(queues, str):
        raise TypeError(f"queues takes a list of queue names, e.g. queues=[{queues!r}].")
    return TaskWorker(
        backend=backend, queues=queues, pool="inline", concurrency=concurrency, prefetch=0,
        max_tasks=max_tasks, worker_id=f"testing-{uuid.uuid4().hex[:12]}",
    )
