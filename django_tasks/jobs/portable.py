"""The statements PostgreSQL and SQLite run as written, each once.

Every other statement is spelled per database, in :mod:`django_tasks.jobs.postgresql` and
:mod:`django_tasks.jobs.sqlite`; these are the ones whose text is the same for both
(plain SQL, no JSON, no arrays, no clock), run by :class:`django_tasks.jobs.engine.Engine`
for either. A statement here that needs something one database lacks moves to the two
engine modules, one spelling each: it never grows a per-database fragment.

Parameters are named (``%(name)s``); the table is ``"django_tasks_job"``, quoted as both
databases quote it. A held job is ``NOT (lease = '')``, spelled as the partial indexes'
predicates are (``~Q(lease="")``): SQLite uses a partial index only where the query's
terms match its predicate's, and read the whole table for ``lease <> ''``.
"""

from __future__ import annotations

from .rows import MESSAGE_COLUMNS
from .tally import COLUMNS as COUNT_COLUMNS

# Claimed, never started: READY again, as if never claimed. Not a job asked to cancel:
# that one is written CANCELLED through the outcome path (its workflow moves on).
GIVE_BACK = (
    "UPDATE \"django_tasks_job\" SET status = 'READY', worker_id = '', lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = 'CLAIMED' "
    "AND cancellation IS NULL"
)
GIVE_BACK_ALL = (
    "UPDATE \"django_tasks_job\" SET status = 'READY', worker_id = '', lease = '' "
    "WHERE worker_id = %(worker)s AND NOT (lease = '') AND status = 'CLAIMED' "
    "AND cancellation IS NULL"
)
# The workers that hold jobs (rescue asks which of them are not running), one index
# descent per holder (a loose index scan of the held-jobs index, ``worker_id`` where a
# lease is set): its cost is the number of holders, not the size of the table. As
# ``SELECT DISTINCT worker_id ... WHERE lease <> ''`` the planner chose by statistics:
# next to 1,000,000 ready and 1,000,000 finished jobs never analyzed, a parallel
# sequential or bitmap scan of the table, up to 317 ms every HEARTBEAT_INTERVAL for each
# worker (a bitmap scan also never marks the dead entries it rechecks).
HOLDERS = (
    "WITH RECURSIVE h(worker_id) AS ("
    "SELECT (SELECT worker_id FROM \"django_tasks_job\" WHERE NOT (lease = '') "
    "AND status IN ('CLAIMED', 'RUNNING') ORDER BY worker_id LIMIT 1) "
    "UNION ALL SELECT (SELECT j.worker_id FROM \"django_tasks_job\" AS j "
    "WHERE NOT (j.lease = '') AND j.status IN ('CLAIMED', 'RUNNING') "
    "AND j.worker_id > h.worker_id ORDER BY j.worker_id LIMIT 1) "
    "FROM h WHERE h.worker_id IS NOT NULL) "
    "SELECT worker_id FROM h WHERE worker_id IS NOT NULL"
)
# A lost worker's running jobs, as claimed (a RunningRow), for the failure policy.
RUNNING_OF = (
    "SELECT " + ", ".join(MESSAGE_COLUMNS) + ", last_attempted_at FROM \"django_tasks_job\" "
    "WHERE worker_id = %(worker)s AND NOT (lease = '') AND status = 'RUNNING'"
)
# Unique jobs. The conflict target names the partial unique index
# ``django_tasks_job_unique`` (its columns and predicate): a job whose key an active job
# holds is not inserted, and the caller's transaction goes on unharmed (an INSERT that
# raised IntegrityError would abort it on PostgreSQL). A conflicting row of a
# transaction still in flight makes the INSERT wait for it: committed, it conflicts;
# rolled back, the key is free and this INSERT goes ahead.
ON_CONFLICT_UNIQUE = (
    " ON CONFLICT (backend, unique_key) WHERE status IN ('READY', 'CLAIMED', 'RUNNING') "
    "AND NOT (unique_key = '') DO NOTHING"
)
# The columns a bulk insert writes (``INSERT_MANY`` of each engine), in its order; the
# others take their defaults.
INSERT_COLUMNS = ("id", "task_path", "backend", "queue_name", "priority", "status", "args",
                  "kwargs", "errors", "worker_ids", "attempts", "max_attempts", "enqueued_at",
                  "run_after", "available_at", "worker_id", "lease", "workflow_id",
                  "waiting_on", "links", "unique_key", "expires_at", "headers")
# Appended to a unique job's INSERT: a row back if it was inserted.
INSERTED = " RETURNING 1"
# The job holding a key: the active one (UNIQUE_ACTIVE), or the last one that finished
# among those enqueued at or after ``since`` (UNIQUE_RECENT, for ``unique_for``). The
# predicates are spelled as the partial indexes' are: SQLite matches them as text.
UNIQUE_ACTIVE = (
    "SELECT * FROM \"django_tasks_job\" WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND status IN ('READY', 'CLAIMED', 'RUNNING') AND NOT (unique_key = '')"
)
UNIQUE_RECENT = (
    "SELECT * FROM \"django_tasks_job\" WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND NOT (unique_key = '') AND NOT (status IN ('READY', 'CLAIMED', 'RUNNING')) "
    "AND enqueued_at >= %(since)s ORDER BY enqueued_at DESC LIMIT 1"
)
# Claimed, never started, asked to cancel: (id, lease, task_path) to write CANCELLED.
CANCELLED_CLAIMS = (
    "SELECT id, lease, task_path FROM \"django_tasks_job\" WHERE worker_id = %(worker)s "
    "AND NOT (lease = '') AND status = 'CLAIMED' AND cancellation IS NOT NULL"
)
# Which of a worker's held jobs are asked to cancel (the cancel poll; through the index of
# jobs asked to cancel, django_tasks_job_cancelling).
CANCELLING_OF = (
    "SELECT id, cancellation FROM \"django_tasks_job\" WHERE worker_id = %(worker)s "
    "AND NOT (lease = '') "
    "AND status IN ('CLAIMED', 'RUNNING') AND cancellation IS NOT NULL"
)
CANCEL_REQUESTED = (
    "SELECT 1 FROM \"django_tasks_job\" WHERE id = %(id)s AND cancellation IS NOT NULL"
)
# A workflow step counts ``n`` of its inputs as done (a Decremented row); the database
# serialises concurrent decrements on the row, so exactly one sees it reach 0.
DECREMENT = (
    "UPDATE \"django_tasks_job\" SET waiting_on = waiting_on - %(n)s "
    "WHERE id = %(id)s AND status = 'WAITING' RETURNING waiting_on, links, args"
)

# -- rate limits (django_tasks.rates) ------------------------------------------------------

# The row of a rate-limited key, made once (its reservations then update it).
ENSURE_RATE = (
    "INSERT INTO \"django_tasks_rate\" (backend, key, next_at, last_granted) "
    "VALUES (%(backend)s, %(key)s, 0, 0) ON CONFLICT (backend, key) DO NOTHING"
)
# Claimed jobs of a rate-limited key for which no start slot was free within the
# horizon: READY again, due when one will be (``available_at``); not one asked to cancel.
GIVE_BACK_AT = (
    "UPDATE \"django_tasks_job\" SET status = 'READY', worker_id = '', lease = '', "
    "available_at = %(at)s "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = 'CLAIMED' "
    "AND cancellation IS NULL"
)


def reserve_slots(now: str, greatest: str, least: str, floor: str) -> str:
    """Reserve up to ``want`` start slots of a key within ``horizon`` seconds of ``now``,
    spaced ``interval`` apart, in one UPDATE (both databases evaluate SET from the old
    row and RETURNING from the new): ``next_at`` moves past the slots granted,
    ``last_granted`` says how many, and the statement's ``now`` comes back, so the first
    slot is ``next_at - last_granted * interval`` by the database's clock. The dialects
    differ in their clock and in the spelling of max, min and floor."""
    base = f"{greatest}(next_at, {now})"
    granted = (f"CASE WHEN {base} > {now} + %(horizon)s THEN 0 ELSE {least}(%(want)s, "
               + floor.format(f"(({now} + %(horizon)s) - {base}) / %(interval)s") + " + 1) END")
    return ("UPDATE \"django_tasks_rate\" SET "
            f"next_at = {base} + %(interval)s * ({granted}), last_granted = {granted} "
            "WHERE backend = %(backend)s AND key = %(key)s "
            f"RETURNING next_at, last_granted, {now}")


# -- statistics ---------------------------------------------------------------------------

# A minute's row adds what was counted (every column but the key's), whoever counted it
# first: PostgreSQL and SQLite spell the upsert alike. The conflict target is the
# unique constraint ``django_tasks_minute_key``.
_KEY = ("minute", "backend", "queue_name", "task_path", "outcome")
COUNT_CONFLICT = (
    " ON CONFLICT (" + ", ".join(_KEY) + ") DO UPDATE SET "
    + ", ".join(f"{c} = \"django_tasks_minute\".{c} + excluded.{c}"
                for c in COUNT_COLUMNS if c not in _KEY)
)
COUNT_INTO = "INSERT INTO \"django_tasks_minute\" (" + ", ".join(COUNT_COLUMNS) + ") "
# One row of a tally (``jobs/tally.py``), run once per row by executemany.
COUNT = (COUNT_INTO + "VALUES (" + ", ".join(f"%({c})s" for c in COUNT_COLUMNS) + ")"
         + COUNT_CONFLICT)
# The rows of one period (an hour), deleted and returned: rolled up into one row per
# queue, task and outcome (``jobs/statistics.py``). Deleting what is read makes a
# concurrent roll-up of the same hour wait, then find the rows gone: nothing counted twice.
TAKE_PERIOD = (
    "DELETE FROM \"django_tasks_minute\" WHERE backend = %(backend)s "
    "AND minute >= %(start)s AND minute < %(end)s RETURNING " + ", ".join(COUNT_COLUMNS)
)
# The running totals (``django_tasks_total``): a tally row added to its key's row, the
# minute left out. Run beside COUNT by the statistics' writers, never by the roll-ups:
# the totals only grow (the counters of ``/metrics``, docs/observability.md).
TOTAL_COLUMNS = tuple(c for c in COUNT_COLUMNS if c != "minute")
_TOTAL_KEY = ("backend", "queue_name", "task_path", "outcome")
TOTAL = (
    "INSERT INTO \"django_tasks_total\" (" + ", ".join(TOTAL_COLUMNS) + ") VALUES ("
    + ", ".join(f"%({c})s" for c in TOTAL_COLUMNS) + ") ON CONFLICT ("
    + ", ".join(_TOTAL_KEY) + ") DO UPDATE SET "
    + ", ".join(f"{c} = \"django_tasks_total\".{c} + excluded.{c}"
                for c in TOTAL_COLUMNS if c not in _TOTAL_KEY)
)
