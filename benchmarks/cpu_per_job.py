"""CPU per job of a drain, summed over the processes that handle it: what a job costs.

For each broker: N no-op jobs enqueued in one transaction (untimed), then one
``manage.py worker -c 2 --burst`` drains them. Reported per job:

- worker: user + system CPU of the worker and its prefork children (the rusage of the
  reaped subprocess tree, as ``getrusage(RUSAGE_CHILDREN)`` sees it);
- PostgreSQL: user + system CPU of the processes that serve the benchmark database:
  the children of its cluster's postmaster (the parent of this connection's backend,
  ``pg_backend_pid()``) whose process title names the database (client backends and
  autovacuum workers), read from /proc by a thread every 10 ms, those that exit during
  the run counted with the CPU they were last seen with (:class:`DatabaseCpu`). Other
  databases and clusters on the host do not count, nor the cluster's shared processes
  (WAL writer, checkpointer). ``--postgres-cpu cluster`` counts the whole cluster
  instead (the postmaster's children and its reaped ones: on a cluster of its own);
- the broker's server: the same for the Redis server (its pid from ``INFO server``) or
  RabbitMQ's ``beam.smp``; none for the database broker;
- total, and the drain rate (wall clock, start of the worker to its exit).

Wall-clock rates move +-30% on 2 shared cores; CPU per job moves far less. Runs alternate
between the brokers; the table shows medians. Needs Linux (/proc) and the servers on
this host. Work of other users of the same Redis server counts too.

    .venv/bin/python benchmarks/cpu_per_job.py [--jobs 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import throughput as tp  # after the path is set

HZ = os.sysconf("SC_CLK_TCK")


#: RabbitMQ's server processes, by the command name /proc shows.
RABBITMQ = ("beam.smp",)


class Cpu(NamedTuple):
    """CPU seconds of the parties of a run (a reading, or the difference of two)."""

    worker: float  # the measured client: reaped subprocesses, or this process
    postgres: float
    server: float  # the broker's server; 0 for the database broker

    def __sub__(self, other: tuple) -> Cpu:  # type: ignore[override]
        return Cpu(*(a - b for a, b in zip(self, other, strict=True)))

    def per_job(self, n: int) -> Cpu:
        """Microseconds per job."""
        return Cpu(*(v / n * 1e6 for v in self))


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ...], or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def _ticks(fields: list[str] | None, *, reaped: bool = True) -> int:
    """utime + stime (+ cutime + cstime: the children it reaped) of a _stat()."""
    if fields is None:
        return 0
    return sum(int(x) for x in fields[11:15 if reaped else 13])


def process_tree_cpu(root: int) -> float:
    """Seconds of CPU used so far by ``root`` and its children, those it reaped included
    (a PostgreSQL backend that exited is in its postmaster's cutime + cstime)."""
    ticks = _ticks(_stat(root))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            fields = _stat(pid)
            if fields is not None and fields[1] == str(root):
                ticks += _ticks(fields, reaped=False)
    return ticks / HZ


def process_cpu(names: tuple[str, ...]) -> float:
    """Seconds of CPU used so far by every process whose name starts with one of
    ``names``, reaped children included."""
    if not names:
        return 0.0
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith(names):
                    continue
        except OSError:  # gone meanwhile
            continue
        ticks += _ticks(_stat(pid))
    return ticks / HZ


@functools.cache
def postmaster_pid() -> int:
    """The postmaster of the cluster that serves Django's default database: the parent
    of this connection's backend (the server must run on this host)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    with open(f"/proc/{backend}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise RuntimeError(f"no PPid in /proc/{backend}/status")


#: What the PostgreSQL column counts: "database" (the backends and autovacuum workers of
#: the benchmark database, DatabaseCpu) or "cluster" (every process of its cluster).
POSTGRES_SCOPE = "database"


def postgres_cpu(exclude: Collection[int] = ()) -> float:
    """Seconds of CPU used so far by PostgreSQL for the benchmark database
    (:data:`POSTGRES_SCOPE`): its own backends, those that exited included
    (:class:`DatabaseCpu`), or the whole cluster (the postmaster and every child,
    reaped backends included, and the background processes: other databases of that
    cluster count too); less the live backends ``exclude`` (the benchmark's own)."""
    if POSTGRES_SCOPE == "cluster":
        left = sum(_runtime(str(pid)) or 0 for pid in exclude) / 1e9
        return process_tree_cpu(postmaster_pid()) - left
    return database_cpu().seconds(exclude)


def _runtime(pid: str) -> int | None:
    """Nanoseconds of CPU a (single-threaded) process has used, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class DatabaseCpu:
    """CPU of the PostgreSQL processes serving one database, whatever else its cluster
    serves: the postmaster's children whose process title names the database (client
    backends, autovacuum workers), read from ``/proc/<pid>/schedstat`` (nanoseconds:
    ``/proc/<pid>/stat`` counts whole clock ticks of 10 ms, and most of a worker's
    dozen backends use less than one) by a thread every ``interval`` seconds. A backend
    that exits keeps the CPU it was last seen with (the CPU of its last ``interval`` is
    missed).
    The cluster's shared processes (WAL writer, checkpointer, background writer) are
    not counted: they serve every database. Needs ``update_process_title`` (on by
    default on Linux), checked against ``pg_stat_activity`` when it starts."""

    def __init__(self, postmaster: int, dbname: str, interval: float | None = 0.005) -> None:
        import threading

        self.postmaster = postmaster
        self.dbname = dbname
        self.interval = interval
        self._lock = threading.Lock()
        # (pid, start time) -> [ticks when first seen, ticks when last seen]; processes
        # there before the first reading count from then, later ones from their start.
        self._seen: dict[tuple[str, str], list[int]] = {}
        self._others: set[tuple[str, str]] = set()  # children serving something else
        self._first = True
        self.sample()
        self._first = False
        if interval is not None:  # None: sampled only when read (tests)
            thread = threading.Thread(target=self._run, name="postgres-cpu", daemon=True)
            thread.start()

    def _mine(self, pid: str) -> bool | None:
        """Whether the process serves the database; None: it cannot tell yet (a backend
        just forked shows the postmaster's command line until it has read who connects)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            return False
        if not title or title[0] != "postgres:":
            return None
        # "postgres: [cluster_name:] user database host(port) state", or
        # "postgres: autovacuum worker database"
        words = title[1:]
        if words and words[0].endswith(":"):
            words = words[1:]
        return self.dbname in words[:3]

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.postmaster}/task/{self.postmaster}/children") as f:
                children = f.read().split()
        except OSError:
            return
        with self._lock:
            for pid in children:
                fields = _stat(pid)
                if fields is None:
                    continue
                key = (pid, fields[19])  # the start time tells a reused pid apart
                if key in self._others:
                    continue
                ticks = _runtime(pid)
                if ticks is None:
                    continue
                entry = self._seen.get(key)
                if entry is not None:
                    entry[1] = ticks
                    continue
                mine = self._mine(pid)
                if mine:
                    self._seen[key] = [ticks if self._first else 0, ticks]
                elif mine is not None:
                    self._others.add(key)

    def _run(self) -> None:
        assert self.interval is not None
        while True:
            time.sleep(self.interval)
            self.sample()

    def seconds(self, exclude: Collection[int] = ()) -> float:
        """CPU seconds of the database's processes since this object was made, but
        those of the pids ``exclude``."""
        self.sample()
        skip = {str(pid) for pid in exclude}
        with self._lock:
            return sum(last - first for (pid, _), (first, last) in self._seen.items()
                       if pid not in skip) / 1e9

    def backends(self) -> set[int]:
        """The pids of the live processes counted (for the check at start)."""
        self.sample()
        with self._lock:
            return {int(pid) for pid, _ in self._seen if _stat(pid) is not None}


@functools.cache
def database_cpu() -> DatabaseCpu:
    """The sampler of the benchmark database (Django's default), started on first use;
    checked: it counts this connection's backend, found by its process title."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_database()")
        backend, dbname = cursor.fetchone()
    sampler = DatabaseCpu(postmaster_pid(), dbname)
    if backend not in sampler.backends():
        raise RuntimeError(
            f"PostgreSQL's process titles do not name the database {dbname!r} (is "
            "update_process_title off?): count the whole cluster (--postgres-cpu cluster) "
            "on a cluster of the benchmark's own")
    return sampler


@functools.cache
def redis_pid(url: str) -> int:
    """The pid of the Redis server at ``url`` (``INFO server``'s ``process_id``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def redis_cpu(url: str) -> float:
    """Seconds of CPU used so far by the Redis server at ``url`` (one process; its
    reaped forks, e.g. a BGSAVE, included)."""
    return process_tree_cpu(redis_pid(url))


def server_cpu(broker: str) -> float:
    """Seconds of CPU used so far by the broker's server (0 for the database broker)."""
    if broker == "redis":
        return redis_cpu(os.environ["REDIS_URL"])
    if broker == "rabbitmq":
        return process_cpu(RABBITMQ)
    return 0.0


def children_cpu() -> float:
    """Seconds of CPU of this process's reaped subprocesses (and theirs, once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    """Seconds of CPU of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reading(server: Callable[[], float], client: Callable[[], float] = children_cpu) -> Cpu:
    """CPU seconds so far of the client, PostgreSQL and ``server``."""
    return Cpu(client(), postgres_cpu(), server())


def own_backend() -> int:
    """The pid of this process's PostgreSQL backend (Django's default connection)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def tree_reading(root: int, server: Callable[[], float]) -> Cpu:
    """CPU seconds so far of the process tree ``root`` (a running worker and its
    children), PostgreSQL less this process's own backend (a benchmark polling for its
    jobs), and ``server``."""
    return Cpu(process_tree_cpu(root), postgres_cpu(exclude=[own_backend()]), server())


def settle() -> None:
    """Give the postmaster time to reap the backends of processes that just exited."""
    time.sleep(0.5)


def measure(n: int, broker: str, workers: int = 1,
            fill: Callable[[int], None] | None = None) -> tuple[Cpu, float | None, str]:
    """(CPU seconds, jobs/s, verification) of one drain of n jobs by ``workers`` x
    ``worker -c 2 --burst`` at once; ``fill(n)`` makes the backlog (default: enqueued
    in one transaction, into truncated tables)."""
    if fill is None:
        tp.truncate()
        tp.enqueue_backlog(n)
    else:
        fill(n)
    server = functools.partial(server_cpu, broker)
    before = reading(server)
    rate, check = tp.drain_run(n, workers=workers, exited=(stop := Stop(server)))
    return stop.used - before, rate, check


class Stop:
    """The CPU reading when the workers of a drain have exited (after :func:`settle`),
    taken before the harness verifies what they did: its queries are not the drain's."""

    def __init__(self, server: Callable[[], float]) -> None:
        self.server = server
        self.used = Cpu(0.0, 0.0, 0.0)

    def __call__(self) -> None:
        settle()
        self.used = reading(self.server)


def add_postgres_cpu_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--postgres-cpu", choices=("database", "cluster"), default="database",
                        help="the PostgreSQL column: the backends of the benchmark database "
                        "(default), or every process of its cluster (on a cluster of its own)")


def use_postgres_cpu(scope: str) -> None:
    global POSTGRES_SCOPE
    POSTGRES_SCOPE = scope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="N jobs (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs each (default %(default)s)")
    parser.add_argument("--database-url", default=tp.DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--brokers", default=",".join(tp.BROKERS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--redis-url", default=tp.DEFAULT_REDIS_URL, help="default %(default)s")
    parser.add_argument("--rabbitmq-url", default=tp.DEFAULT_RABBITMQ_URL,
                        help="default %(default)s")
    add_postgres_cpu_option(parser)
    args = parser.parse_args()
    use_postgres_cpu(args.postgres_cpu)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not brokers or set(brokers) - set(tp.BROKERS):
        parser.error(f"--brokers takes a comma-separated list of {', '.join(tp.BROKERS)}")
    tp.ensure_database(args.database_url)
    tp.setup_django(args.database_url)
    n = args.jobs
    runs: dict[str, list[tuple[float, float, float, float | None]]] = {b: [] for b in brokers}
    for i in range(1, args.repeat + 1):
        for broker in brokers:
            tp.use_broker(broker, args.redis_url, args.rabbitmq_url)
            cpu, rate, check = measure(n, broker)
            worker, pg, server = cpu.per_job(n)
            runs[broker].append((worker, pg, server, rate))
            print(f"run {i}/{args.repeat} {broker}: worker {worker:.0f} us/job, "
                  f"PostgreSQL {pg:.0f} us/job, broker server {server:.0f} us/job, "
                  f"{tp.fmt(rate, 'jobs/s')}; {check}")
    tp.truncate()
    print()
    print(f"CPU per job, N={n}, repeat={args.repeat}, worker -c 2 (prefork), medians")
    table = []
    for broker, values in runs.items():
        worker = tp.median([w for w, _, _, _ in values])
        pg = tp.median([p for _, p, _, _ in values])
        server = tp.median([s for _, _, s, _ in values])
        rate = tp.median([r for _, _, _, r in values])
        table.append([broker, f"{worker:.0f} us", f"{pg:.0f} us", f"{server:.0f} us",
                      f"{(worker or 0) + (pg or 0) + (server or 0):.0f} us",
                      tp.fmt(rate, "jobs/s")])
    tp.print_table(["broker", "worker", "PostgreSQL", "broker server", "total", "drain"],
                   table)


if __name__ == "__main__":
    main()
