"""CPU per job of a drain, summed over the processes that handle it: what a job costs.

For each broker: N no-op jobs enqueued in one transaction (untimed), then one
``manage.py worker -c 2 --burst`` drains them. Reported per job:

- worker: user + system CPU of the worker and its prefork children (the rusage of the
  reaped subprocess tree, as ``getrusage(RUSAGE_CHILDREN)`` sees it);
- PostgreSQL: user + system CPU of every ``postgres`` process, read from /proc before and
  after (``utime``, ``stime`` and the reaped children's ``cutime``, ``cstime``: backends
  that exit during the run are counted in the postmaster's);
- the broker's server: the same for ``redis-server`` (Redis broker) or RabbitMQ's
  ``beam.smp`` (RabbitMQ broker); none for the database broker;
- total, and the drain rate (wall clock, start of the worker to its exit).

Wall-clock rates move +-30% on 2 shared cores; CPU per job moves far less. Runs alternate
between the brokers; the table shows medians. Needs Linux (/proc) and the servers on
this host. Servers shared with other users count their work too.

    .venv/bin/python benchmarks/cpu_per_job.py [--jobs 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import throughput as tp  # after the path is set

HZ = os.sysconf("SC_CLK_TCK")


#: The processes of each broker's server, by the command name /proc shows.
SERVERS = {"database": (), "redis": ("redis-server",), "rabbitmq": ("beam.smp",)}


def postgres_cpu() -> float:
    """Seconds of CPU used by every ``postgres`` process so far, reaped backends included."""
    return process_cpu(("postgres",))


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
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:  # gone meanwhile
            continue
        if not data[data.index("(") + 1:data.rindex(")")].startswith(names):
            continue
        fields = data[data.rindex(")") + 2:].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / HZ


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(n: int, broker: str) -> tuple[float, float, float, float | None, str]:
    """(worker seconds, PostgreSQL seconds, broker server seconds, jobs/s, verification)
    of one drain of n jobs."""
    tp.truncate()
    tp.enqueue_backlog(n)
    server = SERVERS.get(broker, ())
    worker0, pg0, server0 = children_cpu(), postgres_cpu(), process_cpu(server)
    rate, check = tp.drain_run(n)
    time.sleep(0.5)  # the postmaster reaps the worker's backends
    return (children_cpu() - worker0, postgres_cpu() - pg0, process_cpu(server) - server0,
            rate, check)


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
            worker, pg, server, rate, check = measure(n, broker)
            runs[broker].append((worker, pg, server, rate))
            print(f"run {i}/{args.repeat} {broker}: worker {worker / n * 1e6:.0f} us/job, "
                  f"PostgreSQL {pg / n * 1e6:.0f} us/job, broker server "
                  f"{server / n * 1e6:.0f} us/job, {tp.fmt(rate, 'jobs/s')}; {check}")
    tp.truncate()
    print()
    print(f"CPU per job, N={n}, repeat={args.repeat}, worker -c 2 (prefork), medians")
    table = []
    for broker, values in runs.items():
        worker = tp.median([w / n * 1e6 for w, _, _, _ in values])
        pg = tp.median([p / n * 1e6 for _, p, _, _ in values])
        server = tp.median([s / n * 1e6 for _, _, s, _ in values])
        rate = tp.median([r for _, _, _, r in values])
        table.append([broker, f"{worker:.0f} us", f"{pg:.0f} us", f"{server:.0f} us",
                      f"{(worker or 0) + (pg or 0) + (server or 0):.0f} us",
                      tp.fmt(rate, "jobs/s")])
    tp.print_table(["broker", "worker", "PostgreSQL", "broker server", "total", "drain"],
                   table)


if __name__ == "__main__":
    main()
