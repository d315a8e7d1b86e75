"""CPU per job of a drain, summed over the processes that handle it: what a job costs.

For each broker: N no-op jobs enqueued in one transaction (untimed), then one
``manage.py worker -c 2 --burst`` drains them. Reported per job:

- worker: user + system CPU of the worker and its prefork children (the rusage of the
  reaped subprocess tree, as ``getrusage(RUSAGE_CHILDREN)`` sees it);
- PostgreSQL: user + system CPU of the cluster that serves the benchmark database (the
  parent of this connection's backend, ``pg_backend_pid()``, and its children), read
  from /proc before and after (``utime``, ``stime`` and the postmaster's ``cutime``,
  ``cstime``: backends that exit during the run are counted there once reaped). Other
  clusters on the host do not count; other databases of the same cluster do;
- the broker's server: the same for the Redis server (its pid from ``INFO server``) or
  RabbitMQ's ``beam.smp``; none for the database broker;
- total, and the drain rate (wall clock, start of the worker to its exit).

Wall-clock rates move +-30% on 2 shared cores; CPU per job moves far less. Runs alternate
between the brokers; the table shows medians. Needs Linux (/proc) and the servers on
this host. Work of other users of the same servers (Redis, the PostgreSQL cluster)
counts too.

    .venv/bin/python benchmarks/cpu_per_job.py [--jobs 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
from collections.abc import Callable
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


def postgres_cpu() -> float:
    """Seconds of CPU used so far by the PostgreSQL cluster of the benchmark database
    (its postmaster and every child: backends, reaped ones included, and the background
    processes). Other databases of that cluster count; other clusters do not."""
    return process_tree_cpu(postmaster_pid())


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
    rate, check = tp.drain_run(n, workers=workers)
    settle()
    return reading(server) - before, rate, check


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
    args = parser.parse_args()
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
