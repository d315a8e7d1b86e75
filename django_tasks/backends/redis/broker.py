"""The Redis broker: Redis carries the messages and their order; job rows stay the truth.

``TASKS = {"default": {"BACKEND": "django_tasks.backends.redis.RedisBackend",
"OPTIONS": {"URL": "redis://127.0.0.1:6379/0"}}}``

A job is a row in the ``Job`` model, as with the database broker: status, attempts,
errors, results and progress never live in Redis, so nothing vanishes with Redis's
memory. Redis holds only *which* job runs next: the row's id in a sorted set.

How a job travels
-----------------
1. ``enqueue`` INSERTs the row in the caller's transaction; once that commits (at once
   in autocommit), one script call adds the id to its queue (or to the delayed set).
   A rollback publishes nothing, and neither
   does a unique job whose key another job holds (no row was inserted). The enqueue
   does not wait for Redis's reply (``publisher.py``): a failed publish cannot
   fail it, the row being committed, and is logged and left to the reconciler.
2. A worker's round trip pops ids (highest priority, then oldest, across the queues it
   serves) into its *held* hash in one script call, which also moves due delayed jobs
   and forgets the jobs whose outcomes are written; then the job store records starts,
   writes outcomes and claims the popped ids (``ByIds``) under a fresh lease where the
   rows are still READY and due, in one SQL statement on PostgreSQL. The database
   decides: a duplicated or stale message claims nothing and is dropped, so no job runs
   twice. An idle worker (a free slot, no job in sight) waits in Redis instead: it
   blocks in ``BZPOPMIN`` on its queues, so the publish hands the id to one such
   worker, which claims it without a pop of its own (``wakeup.py``).
3. A live worker keeps what it holds however long the jobs run (no visibility
   timeout). A dead worker's jobs are rescued from the rows like with any broker, and
   its held hash is put back into the queues (:meth:`RedisBroker.recover`).

Redis forgets, nothing is lost: every worker reconciles every few seconds. If the
``epoch`` key is gone (Redis restarted without persistence, flushed, failed over to a
replica without it) one worker republishes every READY row (idempotent: a sorted
set holds an id once); and the head of each queue a worker serves, as the database
orders it, is compared with Redis, so a job whose publish was lost (Redis down at
enqueue time, a producer killed between commit and publish) is published by the
time it is due to run.

Keys (``P`` is OPTIONS["PREFIX"], default ``django_tasks:<alias>:<db>``)
------------------------------------------------------------------------

``<db>`` is 8 hex digits naming the job table's database (engine, host, port, name),
so two projects or environments sharing one Redis server never take each other's
jobs unless they share the database too.

=========================  ======  ===============================================
``P:q:<queue>``            zset    Ready jobs: member = job id, score = (100 -
                                   priority) * 2**42 + due time in ms. Written by
                                   publish, the delayed move and recovery; popped by
                                   workers. Redis deletes it when empty.
``P:delayed``              zset    Jobs not due yet: member ``<rank>|<id>|<queue>``,
                                   score = due time in ms. Moved into ``P:q:*`` by
                                   workers' pops once due (Redis's clock).
``P:held:<worker>``        hash    Jobs a worker popped (or its idle wait did):
                                   field = job id, value =
                                   ``<score>|<queue>`` (to put it back). Fields are
                                   removed once the outcome is written (next round
                                   trip), given back or recovered; the key is deleted
                                   when the worker stops or is recovered.
``P:holders``              set     Worker ids that have a held hash; a worker's id is
                                   removed when its hash is recovered.
``P:epoch``                string  Set once everything READY in the database was
                                   published; its absence triggers a full republish.
``P:reconciling``          string  Lock (60 s expiry) of the worker republishing.
=========================  ======  ===============================================

Nothing else is written, and nothing grows without bound: ids leave the queues when
claimed, held hashes shrink with every round trip. Redis Cluster is not supported
(the client is a plain ``redis.Redis``, which follows no redirection).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

try:
    import redis
    from redis import exceptions as redis_errors
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImproperlyConfigured(
        "The Redis broker needs the redis package: pip install redis (from a checkout of "
        "django-tasks-engine: pip install -e '.[redis]')."
    ) from exc

from ...jobs.messages import ByIds, Message, NewJob, Outcome, Start
from ...jobs.store import BATCH_SIZE
from ...states import READY
from ..base import Broker, BrokerOptions, Exchanged, ModelBackend, database_tag
from ..base import epoch_ms as ms
from ..database import _outage_errors
from .publisher import Publisher
from .scripts import ABSENT_LUA, GIVE_BACK_LUA, POP_LUA, PUBLISH_LUA
from .wakeup import RedisWakeSource

__all__ = ["RedisBackend", "RedisBroker"]

logger = logging.getLogger("django_tasks.worker")

RECONCILE_LOCK_MS = 60_000
HEAD = 200  # rows of each queue's head compared with Redis per reconcile
#: Seconds before a popped job whose row was locked (by a transaction of the
#: application's, an admin action, a migration) is tried again; meanwhile other jobs run.
LOCKED_RETRY = 1.0

def _text(value: bytes | str) -> str:
    """A Redis reply's string (the client returns bytes unless decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def default_prefix(alias: str, database: str) -> str:
    """``django_tasks:<alias>:<8 hex digits naming the job table's database>``."""
    return f"django_tasks:{alias}:{database_tag(database)}"


def rank(priority: int) -> int:
    """Sort rank of a priority: 0 for the highest (100), 200 for the lowest (-100)."""
    return 100 - priority


# Redis's own outages. ReadOnlyError: connected to a replica after a failover;
# OutOfMemoryError: Redis is full (maxmemory with noeviction). A script error
# (ResponseError) is a bug, not an outage.
REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
)


@dataclass(frozen=True)
class RedisOptions(BrokerOptions):
    #: OPTIONS["URL"]: the Redis server ("" when missing: ``manage.py check`` says so).
    url: str = ""
    #: OPTIONS["PREFIX"] of every key, or :func:`default_prefix`.
    prefix: str = ""
    #: OPTIONS["CONNECTION_OPTIONS"]: passed to ``redis.Redis.from_url``.
    connection_options: dict[str, Any] = field(default_factory=dict)
    #: Seconds between heartbeats: the reconciler runs at least this often (at most 2 s).
    heartbeat_interval: float = 5.0


class RedisBroker(Broker):
    """Messages in Redis, job rows in the database; see the module docstring."""

    supports_transactional_publish = False  # the row is; the message follows the commit
    supports_wakeup = True
    outage_errors = (*_outage_errors(), *REDIS_OUTAGES)
    option_names = frozenset({"URL", "PREFIX", "CONNECTION_OPTIONS"})
    options: RedisOptions

    @classmethod
    def options_from(cls, backend: ModelBackend) -> RedisOptions:
        options = backend.options
        return RedisOptions(
            alias=backend.alias, url=options.get("URL") or "",
            prefix=options.get("PREFIX") or default_prefix(backend.alias, backend.database),
            connection_options=dict(options.get("CONNECTION_OPTIONS") or {}),
            heartbeat_interval=backend.config.heartbeat_interval,
        )

    def __init__(self, store: Any, options: RedisOptions) -> None:
        super().__init__(store, options)
        self.url = options.url
        self.prefix = options.prefix
        self.connection_options = options.connection_options
        self._client: redis.Redis | None = None
        self._publisher: Publisher | None = None
        self._scripts: dict[str, Any] = {}
        # Per worker id: ids whose outcomes are written (forgotten by the next pop), and
        # ids popped but not claimed yet (an outage between the pop and the claim).
        self._acks: dict[str, list[str]] = {}
        self._popped: dict[str, list[str]] = {}
        # Popped ids the last claim left READY (per worker): missed again, they wait.
        self._missed: dict[str, set[str]] = {}
        self._absent: set[str] = set()  # head rows absent from Redis at the last reconcile
        # Ids an armed wake source popped for this process's worker (wakeup.py): the
        # next claim takes them instead of popping.
        self._handed: deque[str] = deque()

    # -- plumbing ---------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            if not self.url:
                raise ImproperlyConfigured(
                    f"TASKS[{self.alias!r}]['OPTIONS']['URL'] is required by the "
                    "Redis broker, e.g. 'redis://127.0.0.1:6379/0'."
                )
            options = {"socket_timeout": 5.0, "socket_connect_timeout": 3.0,
                       "health_check_interval": 15, **self.connection_options}
            self._client = redis.Redis.from_url(self.url, **options)
        return self._client

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:  # redis-py's Script reloads itself after a Redis restart
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def _eval(self, source: str, args: Sequence[Any]) -> Any:
        """Run a script and return its reply.

        Sent on a pooled connection directly, not through ``Redis.evalsha``: its
        command layer cost ~50 us per call (median of interleaved runs: 124 us vs 72 us
        for a publish), on every enqueue and every worker round trip. The failure
        behaviour is the client's: no retry, and a connection that failed is closed.
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", self._script(source).sha, 0, *args)
            return conn.read_response()
        except redis_errors.NoScriptError:  # Redis restarted: the Script loads itself
            return self._script(source)(args=list(args))
        except redis_errors.ResponseError:
            raise
        except BaseException:
            conn.disconnect()  # a reply may still be on its way
            raise
        finally:
            pool.release(conn)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts)

    def _redis_down(self, exc: BaseException) -> None:
        logger.warning("Redis at %s unreachable (%s: %s): results are still written to the "
                       "database; jobs are claimed again once it is back", self.safe_url(),
                       type(exc).__name__, exc)

    def ping(self) -> None:
        self.client.ping()

    def unreachable(self, exc: BaseException) -> str:
        if isinstance(exc, redis_errors.RedisError):
            return f"Redis at {self.safe_url()} is unreachable"
        return super().unreachable(exc)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, job: Any) -> bool:
        """INSERT the row in the caller's transaction; the message follows its commit
        (only if a row was inserted: a unique job whose key is held publishes nothing)."""
        if not self.store.insert(job):
            return False
        entry = (rank(job.priority), ms(job.run_after), job.queue_name, str(job.id))
        transaction.on_commit(partial(self._publish_committed, [entry]),
                              using=self.store.database)
        return True

    def publish_many(self, jobs: Sequence[NewJob], *,
                     meanwhile: Iterator[None] | None = None) -> set[str] | None:
        """INSERT the rows, one statement per batch, in the caller's transaction; once it
        commits, the READY ones inserted are published in one script call per batch,
        pipelined as a single publish is (not waiting for the reply)."""
        inserted = self.store.insert_many(jobs, meanwhile=meanwhile)
        entries = [(rank(j.priority), ms(j.run_after), j.queue_name, str(j.id)) for j in jobs
                   if j.status == READY and (inserted is None or str(j.id) in inserted)]
        for start in range(0, len(entries), BATCH_SIZE):
            transaction.on_commit(partial(self._publish_committed,
                                          entries[start:start + BATCH_SIZE]),
                                  using=self.store.database)
        return inserted

    def _publish_committed(self, entries: list[tuple[int, int, str, str]]) -> None:
        # Not waiting for the reply; a failure is logged, and the row is committed
        # already: the reconciler publishes it (publisher.py says why).
        self.publisher.send(self._publish_args(entries), [e[3] for e in entries])

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            pool = self.client.connection_pool
            self._publisher = Publisher(
                PUBLISH_LUA, lambda: pool.connection_class(**pool.connection_kwargs),
                self.safe_url, REDIS_OUTAGES)
        return self._publisher

    def flush(self, timeout: float | None = None) -> None:
        """Wait until Redis has answered every publish this process sent."""
        if self._publisher is not None:
            self._publisher.flush(timeout)

    def _publish_args(self, entries: Iterable[tuple[int, int, str, str]],
                      now: int = 0) -> list[Any]:
        """PUBLISH_LUA's arguments: prefix, now, then (rank, due, queue, id) per job."""
        args: list[Any] = [self.prefix, now]
        for entry in entries:
            args.extend(entry)
        return args

    def _send(self, entries: Iterable[tuple[int, int, str, str]], now: int = 0) -> None:
        args = self._publish_args(entries, now)
        if len(args) > 2:
            self._eval(PUBLISH_LUA, args)

    def _publish_rows(self, rows: Sequence[tuple[str, str, int, datetime]]) -> None:
        """Publish READY rows ``(id, queue, priority, available_at)`` as the database has them."""
        for start in range(0, len(rows), 1000):
            self._send((rank(p), max(1, ms(at)), q, i) for i, q, p, at in rows[start:start + 1000])

    def republish(self, job_ids: Sequence[str]) -> None:
        """Jobs made READY again (an operator's retry) are published once that commits."""
        if job_ids:
            transaction.on_commit(partial(self._republish_now, list(job_ids)),
                                  using=self.store.database)

    def _republish_now(self, job_ids: list[str]) -> None:
        try:
            self._publish_rows(self.store.ready_rows(job_ids))
        except redis_errors.RedisError as exc:
            logger.warning("Could not publish %d retried job(s) (%s); a worker will publish "
                           "them when it reconciles", len(job_ids), exc)

    # -- claiming -----------------------------------------------------------------------

    def _pop(self, worker_id: str, queues: Sequence[str], limit: int,
             now: datetime | None) -> list[str]:
        """Ids popped into ``worker_id``'s held hash, after earlier pops never claimed;
        those the wake source handed over, if any, without a pop (the job waiting for
        the worker is the one to start at once: popping more would delay it by a round
        trip, and the next round trip pops them)."""
        ids = self._popped.setdefault(worker_id, [])
        if self._handed:
            while self._handed:
                ids.append(self._handed.popleft())
            return list(ids)
        acks = self._acks.pop(worker_id, [])
        limit -= len(ids)
        try:
            popped = self._eval(POP_LUA, [
                self.prefix, worker_id, max(0, limit), ms(now), len(queues), *queues, *acks,
            ]) if (limit > 0 and queues) or acks else []
        except BaseException:
            self._acks.setdefault(worker_id, [])[:0] = acks
            raise
        ids.extend(map(_text, popped))
        return list(ids)

    def _settle(self, worker_id: str, popped: list[str], done: Exchanged,
                requeue: Sequence[str] = (), now: datetime | None = None) -> list[Message]:
        """After the claim: popped ids that claimed nothing (stale, duplicated, not due by
        the database's clock, or locked by another transaction) are let go, and those
        still READY are published again as the database has them; returns the messages
        claimed. A row still READY and due that two claims running left alone is locked
        by another transaction (claims skip locked rows): it is tried again after
        ``LOCKED_RETRY``, not at once, so a long lock costs a pop a second, not a busy
        loop; the first miss is published again at once, whatever its cause."""
        self._popped.pop(worker_id, None)
        claimed = {m.id for m in done.claimed}.union(done.unreadable)
        missed = [i for i in popped if i not in claimed]
        before = self._missed.pop(worker_id, set())
        if missed or requeue:
            self._acks.setdefault(worker_id, []).extend(missed)
            try:
                rows = self.store.ready_rows([*missed, *requeue])
                again = before.intersection(missed)
                if again:
                    retry = (now or timezone.now()) + timedelta(seconds=LOCKED_RETRY)
                    rows = [(i, q, p, max(at, retry) if i in again else at)
                            for i, q, p, at in rows]
                self._missed[worker_id] = {r[0] for r in rows}.intersection(missed)
                self._publish_rows(rows)
            except REDIS_OUTAGES as exc:  # committed already: the reconciler will
                self._redis_down(exc)
        return done.claimed

    def claim(self, worker_id: str, lease: str, queues: Sequence[str], limit: int,
              now: datetime | None = None) -> list[Message]:
        if limit <= 0 or not queues:
            return []
        popped = self._pop(worker_id, queues, limit, now)
        done = self.store.claim(worker_id, lease, ByIds(popped, no_disk_wait=True), now)
        return self._settle(worker_id, popped, done, now=now)

    def exchange(self, worker_id: str, *, lease: str, starts: Sequence[Start] = (),
                 outcomes: Sequence[Outcome] = (), queues: Sequence[str] = (),
                 limit: int = 0, now: datetime | None = None) -> Exchanged:
        """One script call (forget written outcomes, move due jobs, pop), then one store
        round trip (starts, outcomes, claim of the popped ids: one SQL statement on
        PostgreSQL)."""
        if not queues:
            limit = 0
        acks = len(self._acks.get(worker_id, ()))
        try:
            popped = self._pop(worker_id, queues, limit, now) if limit > 0 or acks > 256 else []
        except REDIS_OUTAGES as exc:
            if not (starts or outcomes):
                raise
            # Redis is down, the database may not be: results are written all the same
            # (and ids popped earlier claimed); claiming new ones waits for Redis.
            self._redis_down(exc)
            popped = list(self._popped.get(worker_id, ()))
        done = self.store.exchange(worker_id, lease=lease, starts=starts, outcomes=outcomes,
                                   claim=ByIds(popped, no_disk_wait=True), now=now)
        # Written or stale, an outcome's job is no longer ours: the next pop forgets it.
        self._acks.setdefault(worker_id, []).extend(o.id for o in outcomes)
        retried = [a.id for a in done.applied if a.status == READY]
        return done._replace(claimed=self._settle(worker_id, popped, done, retried, now))

    def give_back(self, messages: Sequence[Message]) -> int:
        released = self.store.give_back(messages)
        by_worker: dict[str, list[str]] = {}
        for m in messages:
            by_worker.setdefault(m.worker_ids[-1] if m.worker_ids else "", []).append(m.id)
        for worker_id, ids in by_worker.items():
            self._eval(GIVE_BACK_LUA, [self.prefix, worker_id, *ids])
        return released

    # -- recovery and reconciliation -----------------------------------------------------

    def recover(self, worker_id: str) -> None:
        """Publish again what ``worker_id`` held and the database says is READY (its rows
        were rescued or given back), then forget its held hash."""
        held = self.key("held", worker_id)
        ids = [_text(i) for i in self.client.hkeys(held)]
        self._publish_rows(self.store.ready_rows(ids))
        with self.client.pipeline() as pipe_:
            pipe_.delete(held)
            pipe_.srem(self.key("holders"), worker_id)
            pipe_.execute()
        self._acks.pop(worker_id, None)
        self._popped.pop(worker_id, None)

    def duties(self, queues: Sequence[str]) -> list[tuple[str, float, Callable[..., None]]]:
        interval = min(2.0, self.options.heartbeat_interval)
        return [("reconcile", interval, partial(self.reconcile, queues))]

    def reconcile(self, queues: Sequence[str], now: datetime | None = None) -> None:
        """Make Redis hold what the database says is ready (see the module docstring)."""
        if not self.client.exists(self.key("epoch")):
            self.republish_all()
        self._sweep_heads(queues, now)
        self._recover_strays()

    def republish_all(self) -> int:
        """Publish every READY row of this backend (once Redis lost its data); returns
        how many, or -1 if another worker is doing it."""
        from ...models import Job

        token = uuid.uuid4().hex
        lock = self.key("reconciling")
        if not self.client.set(lock, token, nx=True, px=RECONCILE_LOCK_MS):
            return -1
        began, count, last = time.monotonic(), 0, None
        try:
            jobs = Job.objects.using(self.store.database).filter(
                status=READY, backend=self.alias).order_by("pk")
            while True:
                page = jobs if last is None else jobs.filter(pk__gt=last)
                rows = [(str(i), q, p, a) for i, q, p, a in page.values_list(
                    "id", "queue_name", "priority", "available_at")[:5000]]
                if not rows:
                    break
                self._publish_rows(rows)
                count += len(rows)
                last = rows[-1][0]
                self.client.pexpire(lock, RECONCILE_LOCK_MS)
            self.client.set(self.key("epoch"), token)
        finally:
            if self.client.get(lock) in (token, token.encode()):
                self.client.delete(lock)
        logger.warning("Redis held no record of the queues (restarted, flushed or failed "
                       "over): republished %d ready job(s) from the database in %.2fs",
                       count, time.monotonic() - began)
        return count

    def _sweep_heads(self, queues: Sequence[str], now: datetime | None) -> None:
        """Publish the jobs at the head of each queue (as the database orders it) that
        Redis has not had for two reconciles running (a publish lost)."""
        from ...models import Job

        now = now or self.store.now()
        rows: list[tuple[str, str, int, datetime]] = []
        for queue in queues:
            head = (Job.objects.using(self.store.database)
                    .ready(now, [queue]).filter(backend=self.alias)
                    .values_list("id", "queue_name", "priority", "available_at")[:HEAD])
            rows.extend((str(i), q, p, a) for i, q, p, a in head)
        if not rows:
            self._absent = set()
            return
        args: list[Any] = [self.prefix]
        for i, q, p, _ in rows:
            args.extend((rank(p), q, i))
        absent = set(map(_text, self._eval(ABSENT_LUA, args)))
        lost = absent & self._absent
        self._absent = absent - lost
        if lost:
            logger.warning("Publishing %d ready job(s) Redis did not have (a publish was "
                           "lost)", len(lost))
            self._publish_rows([r for r in rows if r[0] in lost])

    def _recover_strays(self) -> None:
        """Held hashes of workers that are not running (killed before the rescue saw
        them hold anything in the database, or stopped uncleanly)."""
        from ...models import Worker

        holders = set(map(_text, self.client.smembers(self.key("holders"))))
        if not holders:
            return
        running = set(Worker.objects.using(self.store.database).running()
                      .filter(id__in=holders).values_list("id", flat=True))
        for holder in sorted(holders - running):
            self.recover(holder)

    def wake_source(self, queues: Sequence[str]) -> RedisWakeSource | None:
        if not queues:
            return None
        return RedisWakeSource(self.client, [self.key("q", q) for q in queues],
                               self._hand_over, self._hold)

    def _hand_over(self, job_id: bytes | str) -> None:
        """An id the wake source popped: the next claim takes it (:meth:`_pop`)."""
        self._handed.append(_text(job_id))

    def _hold(self, conn: Any, holder: str, key: bytes | str, job_id: bytes | str,
              score: bytes | str) -> None:
        """Record an id the wake source popped from queue ``key`` in ``holder``'s held
        hash, as POP_LUA records those it pops (on the wake source's connection
        ``conn``)."""
        queue = _text(key)[len(self.key("q", "")):]
        value = f"{round(float(_text(score)))}|{queue}"
        conn.send_packed_command(conn.pack_commands([
            ("HSET", self.key("held", holder), job_id, value),
            ("SADD", self.key("holders"), holder),
        ]))
        conn.read_response()
        conn.read_response()

    def status(self) -> list[str]:
        """What Redis holds: ids per queue, delayed, held by workers, and whether it
        still knows the queues (``epoch``)."""
        head = f"Redis at {self.safe_url()} (prefix {self.prefix}):"
        try:
            client = self.client
            queue_key = self.key("q", "")
            queues = sorted(_text(k)[len(queue_key):]
                            for k in client.scan_iter(match=_glob_escape(queue_key) + "*",
                                                      count=1000))
            holders = sorted(map(_text, client.smembers(self.key("holders"))))
            with client.pipeline(transaction=False) as pipe_:
                pipe_.exists(self.key("epoch"))
                pipe_.zcard(self.key("delayed"))
                for queue in queues:
                    pipe_.zcard(self.key("q", queue))
                for holder in holders:
                    pipe_.hlen(self.key("held", holder))
                epoch, delayed, *counts = pipe_.execute()
        except REDIS_OUTAGES as exc:
            return [head, f"  unreachable ({type(exc).__name__}: {exc}); jobs are stored, "
                          "and published once it is back"]
        ready, held = counts[:len(queues)], counts[len(queues):]
        lines = [head]
        lines += [f"  queue {q}: {n} id(s) ready" for q, n in zip(queues, ready, strict=True)]
        if not queues:
            lines.append("  no ids ready")
        lines.append(f"  delayed: {delayed} id(s) not due yet")
        lines.append(f"  held: {sum(held)} id(s) by {len(holders)} worker(s)" + (
            " (" + ", ".join(f"{h} {n}" for h, n in zip(holders, held, strict=True)) + ")"
            if holders else ""))
        lines.append("  epoch: " + ("set" if epoch else
                                    "missing: Redis lost its data or no worker has run yet; "
                                    "the next worker to reconcile republishes every READY job"))
        return lines

    def check(self) -> list[checks.CheckMessage]:
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        if not isinstance(self.url, str) or not self.url:
            return [checks.Error(f"{where}['URL'] is required by the Redis broker.",
                                 hint="e.g. 'redis://127.0.0.1:6379/0'",
                                 id="django_tasks.E006")]
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            return [checks.Error(f"{where}['URL'] must be a redis://, rediss:// or unix:// "
                                 f"URL, not {self.url!r}.", id="django_tasks.E006")]
        try:
            client = redis.Redis.from_url(self.url, **{
                **self.connection_options, "socket_timeout": 1.0,
                "socket_connect_timeout": 1.0})
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis_errors.RedisError:
            return []  # unreachable now, or CONFIG disabled (managed Redis): nothing to say
        if policy and policy != "noeviction":
            return [checks.Warning(
                f"Redis at {self.safe_url()} has maxmemory-policy {policy!r}: under memory "
                "pressure it may evict queued jobs (the reconciler republishes them, late).",
                hint="Set maxmemory-policy to noeviction.", id="django_tasks.W001",
            )]
        return []


class RedisBackend(ModelBackend):
    """Jobs and results in your database; Redis carries the queue.

    ``TASKS = {"default": {"BACKEND": "django_tasks.backends.redis.RedisBackend",
    "OPTIONS": {"URL": "redis://127.0.0.1:6379/0"}}}``
    """

    broker_class = RedisBroker
