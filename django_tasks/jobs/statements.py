"""The SQL of the job store: named statements, vendor fragments in braces, parameters
by name (``%(name)s``), formatted once per database by :meth:`JobStore.sql
<django_tasks.jobs.store.JobStore.sql>`.

Kept apart from the code that runs them so each statement can be read whole, with the
comment that says why it is written the way it is.
"""

from __future__ import annotations

from ..states import ACTIVE_SQL, CANCELLED, CLAIMED, HELD_SQL, READY, RUNNING
from .messages import APPLIED_COLUMNS

#: Columns a claim returns, in this order; ``JobStore.message`` reads them.
MESSAGE_COLUMNS = (
    "id", "lease", "task_path", "queue_name", "priority", "backend", "args", "kwargs",
    "attempts", "max_attempts", "worker_ids", "errors", "enqueued_at", "started_at",
    "run_after", "available_at", "workflow_id",
)
# An outcome write returns messages.APPLIED_COLUMNS (an Applied).

# -- statements (vendor fragments in braces, parameters by name) --------------------------

RECORD_START = (
    "UPDATE {table} SET status = '" + RUNNING + "', attempts = attempts + 1, "
    "started_at = COALESCE(started_at, %(at)s), last_attempted_at = %(at)s, "
    "worker_ids = {append_worker} "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = '" + CLAIMED + "'"
)
# One outcome. A job that started and finished between two writes has no recorded
# start: the outcome counts its attempt (status still CLAIMED tells), unless it never
# ran (a cancelled job dropped from a worker's buffer: CANCELLED without an error). A job asked
# to cancel (``cancellation`` set) ends CANCELLED whatever its attempt did, with the
# cancellation as its last error (or the outcome's own, when it is CANCELLED already:
# the pool's terminate names the kill: its message is then prefixed with who asked).
RAN = (f"status = '{CLAIMED}' AND (%(status)s <> '{CANCELLED}' "
       "OR %(error)s IS NOT NULL)")
APPLY_OUTCOME = (
    "UPDATE {table} SET "
    "status = CASE WHEN cancellation IS NULL THEN %(status)s ELSE '" + CANCELLED + "' END, "
    "return_value = CASE WHEN cancellation IS NULL THEN {json_value} ELSE NULL END, "
    "errors = CASE WHEN cancellation IS NULL OR %(status)s = '" + CANCELLED + "' THEN "
    "(CASE WHEN %(error)s IS NULL THEN {cancelled_or_errors} ELSE {append_outcome_error} END) "
    "ELSE {append_cancellation} END, "
    "finished_at = CASE WHEN cancellation IS NULL THEN %(finished_at)s "
    "ELSE COALESCE(%(finished_at)s, %(now)s) END, "
    "available_at = COALESCE(%(retry_at)s, available_at), "
    "attempts = CASE WHEN " + RAN + " THEN attempts + 1 ELSE attempts END, "
    "started_at = COALESCE(started_at, %(started_at)s), "
    "last_attempted_at = CASE WHEN " + RAN + " THEN %(started_at)s "
    "ELSE last_attempted_at END, "
    "worker_ids = CASE WHEN " + RAN + " THEN {append_worker} ELSE worker_ids END, "
    "lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status IN " + HELD_SQL + " "
    # Nothing becomes CANCELLED unless cancelling it was asked for.
    "AND (%(status)s <> '" + CANCELLED + "' OR cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(APPLIED_COLUMNS)
)
# Many outcomes in one statement (PostgreSQL): also the ``done`` step of the database
# broker's exchange. Cancellation as in APPLY_OUTCOME.
RAN_PG = (f"j.status = '{CLAIMED}' AND (o.status <> '{CANCELLED}' "
          "OR (o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null'))")
APPLY_OUTCOMES_PG = (
    "UPDATE {table} AS j SET "
    "status = CASE WHEN j.cancellation IS NULL THEN o.status ELSE '" + CANCELLED + "' END, "
    "return_value = CASE WHEN j.cancellation IS NOT NULL "
    "OR jsonb_typeof(o.return_value) = 'null' THEN NULL ELSE o.return_value END, "
    "errors = CASE "
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND j.cancellation IS NULL THEN j.errors || jsonb_build_array(o.error) "
    # The outcome says how a cancelled job ended; the cancellation, who asked.
    "WHEN o.error IS NOT NULL AND jsonb_typeof(o.error) <> 'null' "
    "AND o.status = '" + CANCELLED + "' THEN j.errors || jsonb_build_array(o.error || "
    "jsonb_build_object('message', concat(j.cancellation->>'message', ': ', "
    "o.error->>'message'))) "
    "WHEN j.cancellation IS NULL OR jsonb_typeof(j.cancellation) = 'null' THEN j.errors "
    "WHEN o.error IS NULL OR jsonb_typeof(o.error) = 'null' "
    "OR o.status = '" + CANCELLED + "' THEN j.errors || jsonb_build_array(j.cancellation) "
    "ELSE j.errors || jsonb_build_array(o.error, j.cancellation) END, "
    "finished_at = CASE WHEN j.cancellation IS NULL THEN o.finished_at "
    "ELSE COALESCE(o.finished_at, statement_timestamp()) END, "
    "available_at = CASE WHEN o.retry_delay IS NOT NULL "
    "THEN statement_timestamp() + o.retry_delay * interval '1 second' "
    "ELSE COALESCE(o.retry_at, j.available_at) END, "
    "attempts = CASE WHEN " + RAN_PG + " THEN j.attempts + 1 ELSE j.attempts END, "
    "started_at = COALESCE(j.started_at, o.started_at), "
    "last_attempted_at = CASE WHEN " + RAN_PG + " THEN o.started_at "
    "ELSE j.last_attempted_at END, "
    "worker_ids = CASE WHEN " + RAN_PG + " THEN j.worker_ids || "
    "jsonb_build_array(%(worker)s::text) ELSE j.worker_ids END, "
    "lease = '' "
    "FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS o(id uuid, lease text, status text, "
    "return_value jsonb, error jsonb, finished_at timestamptz, retry_at timestamptz, "
    "retry_delay float8, "
    "started_at timestamptz) "
    # ``j.id = ANY(ids)``: the planner then fetches the rows by primary key. Joined on
    # the recordset alone (estimated at 100 rows) it scanned the held-jobs index, whose
    # dead entries grow with every job done until VACUUM: 3 ms per round trip after
    # 4,000 jobs, 4 ms after 16,000.
    "WHERE j.id = ANY(%(outcome_ids)s::uuid[]) AND j.id = o.id AND j.lease = o.lease "
    "AND j.status IN " + HELD_SQL + " "
    "AND (o.status <> '" + CANCELLED + "' OR j.cancellation IS NOT NULL) "
    "RETURNING " + ", ".join(f"j.{c}" for c in APPLIED_COLUMNS)
)
RECORD_STARTS_PG = (
    "UPDATE {table} AS j SET status = '" + RUNNING + "', attempts = j.attempts + 1, "
    "started_at = COALESCE(j.started_at, s.at), last_attempted_at = s.at, "
    "worker_ids = j.worker_ids || jsonb_build_array(%(worker)s::text) "
    "FROM jsonb_to_recordset(%(starts)s::jsonb) AS s(id uuid, lease text, at timestamptz) "
    "WHERE j.id = ANY(%(start_ids)s::uuid[]) AND j.id = s.id AND j.lease = s.lease "
    "AND j.status = '" + CLAIMED + "' RETURNING 1"
)
# Claimed, never started: READY again, as if never claimed. Not a job asked to cancel:
# that one is written CANCELLED through the outcome path (its workflow moves on).
GIVE_BACK = (
    "UPDATE {table} SET status = '" + READY + "', worker_id = '', lease = '' "
    "WHERE id = %(id)s AND lease = %(lease)s AND status = '" + CLAIMED + "' "
    "AND cancellation IS NULL"
)
GIVE_BACK_ALL = (
    "UPDATE {table} SET status = '" + READY + "', worker_id = '', lease = '' "
    "WHERE worker_id = %(worker)s AND lease <> '' AND status = '" + CLAIMED + "' "
    "AND cancellation IS NULL"
)
# Claim jobs by id (a broker that carries ids, such as Redis, chose them): only rows
# still READY and due change, so a duplicated or stale message claims nothing. The
# rows are first locked by primary key alone (in id order: no deadlock between
# claimers), and the conditions are checked on what was locked: with the conditions in
# the UPDATE itself, statistics that are stale after a burst of enqueues (few READY
# rows) made the planner walk the claim index with the ids as a filter, 5 ms for 9
# jobs among 20,000 ready ones; this way it is 0.3 ms whatever the statistics say.
CLAIM_IDS_LOCK_PG = (
    "locked AS MATERIALIZED (SELECT id, status, backend, available_at FROM {table} "
    "WHERE id = ANY(%(claim_ids)s::uuid[]) ORDER BY id FOR UPDATE)"
)
CLAIM_IDS_UPDATE_PG = (
    "UPDATE {table} AS j SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s FROM locked AS l "
    "WHERE j.id = l.id AND l.status = '" + READY + "' AND l.backend = %(backend)s "
    "AND l.available_at <= COALESCE(%(now)s::timestamptz, statement_timestamp()) "
    "RETURNING " + ", ".join(f"j.{c}" for c in MESSAGE_COLUMNS)
)
CLAIM_IDS_PG = "WITH " + CLAIM_IDS_LOCK_PG + " " + CLAIM_IDS_UPDATE_PG
CLAIM_IDS_SQLITE = (
    "UPDATE {table} SET status = '" + CLAIMED + "', worker_id = %(worker)s, "
    "lease = %(lease)s "
    "WHERE id IN ({ids}) AND status = '" + READY + "' AND backend = %(backend)s "
    "AND available_at <= %(now)s "
    "RETURNING " + ", ".join(MESSAGE_COLUMNS)
)
RUNNING_OF = (
    "SELECT " + ", ".join(MESSAGE_COLUMNS) + ", last_attempted_at FROM {table} "
    "WHERE worker_id = %(worker)s AND lease <> '' AND status = '" + RUNNING + "'"
)
# Unique jobs. The conflict target names the partial unique index
# ``django_tasks_job_unique`` (its columns and predicate): a job whose key an active job
# holds is not inserted, and the caller's transaction goes on unharmed (an INSERT that
# raised IntegrityError would abort it on PostgreSQL). A conflicting row of a
# transaction still in flight makes the INSERT wait for it: committed, it conflicts;
# rolled back, the key is free and this INSERT goes ahead.
UNIQUE_PREDICATE = "status IN " + ACTIVE_SQL + " AND NOT (unique_key = '')"
ON_CONFLICT_UNIQUE = " ON CONFLICT (backend, unique_key) WHERE " + UNIQUE_PREDICATE + " DO NOTHING"
# The job holding a key: the active one (UNIQUE_ACTIVE), or the last one that finished
# among those enqueued at or after ``since`` (UNIQUE_RECENT, for ``unique_for``). The
# predicates are spelled as the partial indexes' are: SQLite matches them as text.
UNIQUE_ACTIVE = (
    "SELECT * FROM {table} WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND " + UNIQUE_PREDICATE
)
UNIQUE_RECENT = (
    "SELECT * FROM {table} WHERE backend = %(backend)s AND unique_key = %(key)s "
    "AND NOT (unique_key = '') AND NOT (status IN " + ACTIVE_SQL + ") "
    "AND enqueued_at >= %(since)s ORDER BY enqueued_at DESC LIMIT 1"
)
PROGRESS = (
    "UPDATE {table} SET progress = {json_progress} "
    "WHERE id = %(id)s AND (%(lease)s = '' OR lease = %(lease)s) AND status IN " + HELD_SQL
)



def exchange_pg(claim: str, *ctes: str) -> tuple[str, str]:
    """The worker's whole round trip on PostgreSQL as one statement, ``claim`` being the
    claim's UPDATE: one round trip and one commit however many starts, outcomes and
    claims (data-modifying CTEs always run to completion). A claim's sub-select sees
    the snapshot from before the CTEs, which only touch held rows. Rows: ``'c'`` and
    MESSAGE_COLUMNS for a claimed job, ``'d'`` and APPLIED_COLUMNS at positions
    1-4, 9 and 7 (``links``, in the jsonb column ``args``) for an outcome written.
    ``ctes`` (``name AS (...)``) come before the claim, which may read them.

    Two statements: the whole round trip, and the claim alone for a round trip with no
    start or outcome to write (an idle worker woken by an enqueue). Without the empty
    parts the claim took 341 us instead of 580 us (the Redis broker's) and 412 us
    instead of 750 us (the database broker's): planning them and running them on empty
    JSON both cost, and this round trip is on the path from enqueue to start. A busy
    worker's round trips keep the one statement: leaving out whichever part was empty
    in every round trip measured no faster (database broker, alternating drains of
    20,000 jobs: 3,754 and 3,673 vs 3,823 and 3,828 jobs/s).
    """
    head = "WITH " + "".join(cte + ", " for cte in ctes) + "claimed AS (" + claim + ") "
    claim_only = head + "SELECT 'c', " + ", ".join(MESSAGE_COLUMNS) + " FROM claimed"
    whole = (
        "WITH started AS (" + RECORD_STARTS_PG + "), done AS (" + APPLY_OUTCOMES_PG + "), "
        + "".join(cte + ", " for cte in ctes) + "claimed AS (" + claim + ") "
        "SELECT 'c', " + ", ".join(MESSAGE_COLUMNS) + " FROM claimed "
        "UNION ALL SELECT 'd', id, status, task_path, queue_name, NULL, NULL, links, NULL, "
        "attempts, " + ", ".join(["NULL"] * (len(MESSAGE_COLUMNS) - 9)) + " FROM done"
    )
    return whole, claim_only


VENDORS: dict[str, dict[str, str]] = {
    "postgresql": {
        "append_worker": "worker_ids || jsonb_build_array(%(worker)s::text)",
        "append_error": "errors || jsonb_build_array(%(error)s::jsonb)",
        "json_value": "%(return_value)s::jsonb",
        "json_progress": "%(progress)s::jsonb",
        "now": "SELECT statement_timestamp()",
        "json_param": "%(error)s::jsonb",
        "append_outcome_error": "errors || jsonb_build_array(CASE WHEN cancellation IS NULL "
                                "THEN %(error)s::jsonb ELSE %(error)s::jsonb || "
                                "jsonb_build_object('message', concat(cancellation->>'message', "
                                "': ', %(error)s::jsonb->>'message')) END)",
        "cancelled_or_errors": "CASE WHEN cancellation IS NULL THEN errors "
                               "ELSE errors || jsonb_build_array(cancellation) END",
        "append_cancellation": "CASE WHEN %(error)s IS NULL THEN errors ELSE errors || "
                               "jsonb_build_array(%(error)s::jsonb) END || "
                               "jsonb_build_array(cancellation)",
    },
    "sqlite": {
        "append_worker": "json_insert(worker_ids, '$[#]', %(worker)s)",
        "append_error": "json_insert(errors, '$[#]', json(%(error)s))",
        "json_value": "%(return_value)s",
        "json_progress": "%(progress)s",
        "now": "",  # one host: the database's clock is this host's
        "json_param": "json(%(error)s)",
        "append_outcome_error": "json_insert(errors, '$[#]', CASE WHEN cancellation IS NULL "
                                "THEN json(%(error)s) ELSE json_set(json(%(error)s), "
                                "'$.message', json_extract(cancellation, '$.message') || ': ' "
                                "|| json_extract(%(error)s, '$.message')) END)",
        # A CANCELLED outcome without an error (dropped unstarted): the cancellation.
        "cancelled_or_errors": "CASE WHEN cancellation IS NULL THEN errors "
                               "ELSE json_insert(errors, '$[#]', json(cancellation)) END",
        "append_cancellation": "json_insert(CASE WHEN %(error)s IS NULL THEN errors "
                               "ELSE json_insert(errors, '$[#]', json(%(error)s)) END, "
                               "'$[#]', json(cancellation))",
    },
}
