"""Every figure of the performance issue in one run, one table: figure, value, target, met.

    .venv/bin/python benchmarks/bench.py [--quick] [--rounds R] [--only FIGURES]
        [--database-url URL] [--redis-url URL] [--rabbitmq-url URL] [--celery-redis-url URL]
    make bench [BENCH_ARGS="--quick"]

Figures (``--only`` takes a comma-separated list of these names):

- ``enqueue``: E x ``noop.enqueue()`` from one producer in autocommit, per broker; then
  the same with ``OPTIONS["ASYNCHRONOUS_COMMIT"]`` (a row of its own, no target);
- ``bulk``: N jobs by the task's bulk-enqueue API (``enqueue_many`` or
  ``bulk_enqueue``) when it exists, per broker; "n/a (no bulk API)" otherwise;
- ``drain``: N ready jobs, one ``worker -c 2 --burst`` (prefork), start to exit; and
  the CPU of one such worker's start-up and exit over an empty queue;
- ``workers``: the same N drained by 2, then 4 such workers started together;
- ``latency``: enqueue-to-start p50/p99 of jobs enqueued one at a time (throughput.py);
- ``celery``: Celery 5.7 + Redis side by side (``benchmarks/.celery-venv``, created on
  first use): N x ``noop.delay()`` (the enqueue rate), then ``celery worker -c 2 --pool
  prefork`` timed until the queue is empty, results off and with a Redis result backend;
- ``deep``: N of a queue of B ready jobs next to F finished ones (backlog.py), database
  broker;
- ``memory``: PSS summed over a ``worker -c 4`` tree, half-way and after M jobs.

Each drain row has CPU columns: microseconds per job of the worker tree (rusage of the
reaped processes), PostgreSQL's backends of the benchmark database (``--postgres-cpu
cluster``: every process of its cluster), the broker's server (Redis by its pid,
RabbitMQ's ``beam.smp``) and their total (cpu_per_job.py). Rounds alternate brokers and
configurations so machine noise hits all; values are medians of the rounds. Nothing is
asserted. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import backlog
from benchmarks import cpu_per_job as cpu
from benchmarks import throughput as tp
from benchmarks.cpu_per_job import Cpu

HERE = Path(__file__).resolve().parent
CELERY_VENV = HERE / ".celery-venv"
CELERY_SPEC = "celery[redis]==5.7.*"
CELERY_QUEUE = "celery"  # kombu's Redis keys: the queue list, then delivered-unacked
CELERY_UNACKED = "unacked"
FIGURES = ("enqueue", "bulk", "drain", "workers", "latency", "celery", "deep", "memory")
BULK_NAMES = ("enqueue_many", "bulk_enqueue")
NO_BULK = "n/a (no bulk API)"


# -- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """``value <op> bound``; ``flat`` (memory): the last reading at most 10% above the first."""

    op: str  # "<=" or ">="
    bound: float
    unit: str

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {fmt(self.bound, self.unit)}"


@dataclass
class Figure:
    """One row: its runs (one per round), and the CPU per job of each (µs), if measured."""

    label: str
    unit: str
    target: Target | None = None
    runs: list[float | None] = field(default_factory=list)
    cpus: list[Cpu] = field(default_factory=list)
    note: str = ""  # shown instead of a value (e.g. no bulk API)

    def value(self) -> float | None:
        return tp.median(self.runs)

    def cpu(self) -> Cpu | None:
        if not self.cpus:
            return None
        return Cpu(*(tp.median([c[i] for c in self.cpus]) or 0.0 for i in range(3)))


def fmt(value: float | None, unit: str) -> str:
    """A value with its unit, as the table prints it."""
    if value is None:
        return "FAILED"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("ms", "s CPU"):
        return f"{value:.2f} {unit}"
    return f"{value:,.0f} {unit}"


def verdict(value: float | None, target: Target | None) -> str:
    if target is None:
        return ""
    if value is None:
        return "n/a"
    return "yes" if target.met(value) else "NO"


def cpu_cells(c: Cpu | None, *, postgres: bool = True, server: bool = True) -> list[str]:
    """worker, PostgreSQL, broker server, total (µs/job); '-' where a party takes no part."""
    if c is None:
        return ["", "", "", ""]
    return [f"{c.worker:,.0f} µs", f"{c.postgres:,.0f} µs" if postgres else "-",
            f"{c.server:,.0f} µs" if server else "-", f"{sum(c):,.0f} µs"]


HEADER = ("figure", "value", "worker", "PostgreSQL", "broker srv", "total/job", "target", "met?")


def table_rows(rows: Sequence[tuple[Figure, dict]]) -> list[list[str]]:
    """The table's cells: each figure with its CPU columns, target and verdict."""
    out = []
    for fig, cells in rows:
        value = fig.value()
        shown = fig.note or fmt(value, fig.unit)
        if (not fig.note and value is not None and fig.unit == "x" and fig.target
                and fig.target.met(round(value, 2)) != fig.target.met(value)):
            shown = f"{value:.3f}x"  # "0.90x" beside "NO" (0.896) would read as a mistake
        met = "n/a" if fig.note and fig.target else verdict(value, fig.target)
        out.append([fig.label, shown, *cpu_cells(fig.cpu(), **cells),
                    str(fig.target) if fig.target else "", met])
    return out


def ratio(label: str, num: Figure, den: Figure, target: Target | None,
          part: Callable[[Figure], float | None] = Figure.value) -> Figure:
    """A row of ``num / den`` (their medians, or ``part`` of them)."""
    a, b = part(num), part(den)
    return Figure(label, "x", target, [a / b if a and b else None])


# -- measuring ---------------------------------------------------------------------------

def server_reader(broker: str) -> Callable[[], float]:
    return functools.partial(cpu.server_cpu, broker)


def measure_enqueue(fig: Figure, broker: str, n: int) -> None:
    """N single enqueues in autocommit; the producer's CPU in the worker column."""
    tp.truncate()
    before = cpu.reading(server_reader(broker), cpu.self_cpu)
    rate = tp.enqueue_run(n)
    cpu.settle()
    fig.runs.append(rate)
    fig.cpus.append((cpu.reading(server_reader(broker), cpu.self_cpu) - before).per_job(n))


def bulk_api(task) -> Callable | None:
    """The task's bulk-enqueue method, once there is one (issue 20)."""
    for name in BULK_NAMES:
        method = getattr(task, name, None)
        if method is not None:
            return method
    return None


def measure_bulk(fig: Figure, broker: str, n: int) -> None:
    """N jobs by one bulk call: a list of argument tuples, one per job (no-op: ``()``)."""
    from benchmarks.bench_tasks import noop

    method = bulk_api(noop)
    if method is None:
        fig.note = NO_BULK
        return
    tp.truncate()
    before = cpu.reading(server_reader(broker), cpu.self_cpu)
    started = time.perf_counter()
    try:
        method([()] * n)
    except (TypeError, ValueError) as exc:  # another shape: adapt this call once merged
        fig.note = f"n/a ({type(exc).__name__})"
        print(f"  {method.__name__}([()] * {n}) failed: {exc!r}")
        return
    rate = n / (time.perf_counter() - started)
    cpu.settle()
    fig.cpus.append((cpu.reading(server_reader(broker), cpu.self_cpu) - before).per_job(n))
    stored = tp.status_counts().get("READY", 0)
    fig.runs.append(rate if stored == n else None)
    if stored != n:
        print(f"  bulk enqueue stored {stored} READY jobs of {n}")


def measure_drain(fig: Figure, broker: str, n: int, workers: int = 1) -> str:
    c, rate, check = cpu.measure(n, broker, workers, fill=tp.fill_backlog)
    fig.runs.append(rate)
    fig.cpus.append(c.per_job(n))
    return f"{tp.fmt(rate, 'jobs/s')}, {sum(c.per_job(n)):,.0f} µs/job; {check}"


def measure_startup(fig: Figure, broker: str) -> str:
    """CPU seconds of one ``worker -c 2 --burst`` over an empty queue, start to exit: what
    each worker of a drain row adds to its worker column (divided by N)."""
    tp.truncate()
    server = server_reader(broker)
    before = cpu.reading(server)
    tp.drain_run(0)
    cpu.settle()
    used = cpu.reading(server) - before
    fig.runs.append(used.worker)
    return f"worker {used.worker:.2f} s, PostgreSQL {used.postgres:.2f} s CPU"


def measure_latency(p50: Figure, p99: Figure, broker: str) -> str:
    """The latency run; its CPU per job (jobs one at a time, each waking an idle worker)
    beside the p50: the worker tree, PostgreSQL less the benchmark's own polling
    backend, the broker's server."""
    server = server_reader(broker)
    got = tp.latency_run(lambda pid: cpu.tree_reading(pid, server))
    p50.runs.append(got[0] if got else None)
    p99.runs.append(got[1] if got else None)
    said = f"p50 {tp.fmt(p50.runs[-1], 'ms')}, p99 {tp.fmt(p99.runs[-1], 'ms')}"
    if got:
        p50.cpus.append(got[2].per_job(tp.LATENCY_JOBS))
        said += f", {sum(p50.cpus[-1]):,.0f} µs/job"
    return said


# -- Celery ------------------------------------------------------------------------------

def celery_python() -> Path:
    """The Celery virtualenv's interpreter, the virtualenv created on first use."""
    python = CELERY_VENV / "bin" / "python"
    stamp = CELERY_VENV / ".installed"
    if not stamp.exists():
        print(f"creating {CELERY_VENV} ({CELERY_SPEC}) ...", flush=True)
        for command in ([sys.executable, "-m", "venv", str(CELERY_VENV)],
                        [str(python), "-m", "pip", "install", "--quiet",
                         "--disable-pip-version-check", CELERY_SPEC]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        stamp.touch()
    return python


def celery_version() -> str:
    return subprocess.run([str(CELERY_VENV / "bin" / "celery"), "--version"],
                          capture_output=True, text=True).stdout.strip()


def celery_clear(client) -> None:
    """Delete Celery's keys (queue, unacked, bindings, results) from its Redis database."""
    for pattern in ("celery*", "_kombu*", "unacked*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)


def measure_celery(enqueue: Figure, drain: Figure, n: int, url: str, results: bool) -> str:
    """N x ``noop.delay()`` (timed in the subprocess), then a Celery worker timed from its
    start until Redis holds no message nor unacknowledged delivery (its shutdown, which
    ours includes, is left out); CPU of the worker tree and of redis-server."""
    import redis

    client = redis.Redis.from_url(url)
    celery_clear(client)
    env = {**os.environ, "PYTHONPATH": str(tp.REPO), "CELERY_BENCH_BROKER": url,
           "CELERY_BENCH_RESULTS": url if results else ""}
    done = subprocess.run([str(celery_python()), "-m", "benchmarks.celery_app", "enqueue",
                           str(n)], cwd=tp.REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print("  celery enqueue failed:\n    " + done.stderr.strip().replace("\n", "\n    "))
        enqueue.runs.append(None)
        drain.runs.append(None)
        return "enqueue failed"
    enqueue.runs.append(float(done.stdout.strip().splitlines()[-1]))
    server = functools.partial(cpu.redis_cpu, url)
    before = cpu.reading(server)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(CELERY_VENV / "bin" / "celery"), "-A", "benchmarks.celery_app", "worker",
         "-c", "2", "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        cwd=tp.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = None
    try:
        deadline = time.monotonic() + 60 + n / 100
        while client.llen(CELERY_QUEUE) or client.hlen(CELERY_UNACKED):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        else:
            elapsed = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    cpu.settle()
    c = (cpu.reading(server) - before).per_job(n)
    stored = sum(1 for _ in client.scan_iter(match="celery-task-meta-*", count=1000))
    celery_clear(client)
    client.close()
    rate = n / elapsed if elapsed and (not results or stored >= n) else None
    drain.runs.append(rate)
    drain.cpus.append(Cpu(c.worker, 0.0, c.server))
    if rate is None and output.strip():
        print("  celery worker output:\n    " + output.strip().replace("\n", "\n    "))
    check = f"{stored} results stored" if results else "results off"
    return (f"enqueue {tp.fmt(enqueue.runs[-1], 'jobs/s')}, drain {tp.fmt(rate, 'jobs/s')}, "
            f"{c.worker + c.server:,.0f} µs/job; {check}")


# -- deep queue and memory ---------------------------------------------------------------

def measure_deep(fig: Figure, n: int, ready: int, finished: int, rounds: int) -> None:
    """``backlog.py``'s 2c: N of the deep queue, ``worker -c 2 -Q heavy_compute
    --max-tasks N``, after one build of the backlog; reset between runs."""
    tp.use_broker("database", os.environ["REDIS_URL"], os.environ["RABBITMQ_URL"])
    print(f"building the deep queue: {ready:,} READY + {finished:,} finished rows ...",
          flush=True)
    built = backlog.build_backlog(ready, finished)
    print(f"  built in {built:.0f} s; {backlog.table_report()}", flush=True)
    counts = functools.partial(tp.status_counts, backlog.DEEP_QUEUE)
    server = server_reader("database")
    for i in range(1, rounds + 1):
        if i > 1:
            backlog.reset_backlog()
        done = counts().get("SUCCESSFUL", 0)
        before = cpu.reading(server)
        rate, check = tp.drain_run(n, ("-Q", backlog.DEEP_QUEUE, "--max-tasks", str(n)),
                                   counts, done, exited=(stop := cpu.Stop(server)))
        fig.runs.append(rate)
        fig.cpus.append((stop.used - before).per_job(n))
        print(f"deep run {i}/{rounds}: {tp.fmt(rate, 'jobs/s')}, "
              f"{sum(fig.cpus[-1]):,.0f} µs/job; {check}", flush=True)
    tp.truncate()


def tree_memory(root: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over ``root`` and its descendants (smaps_rollup)."""
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            fields = cpu._stat(pid)
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(pid))
    pss = rss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return pss, rss


def measure_memory(half: Figure, full: Figure, n: int) -> None:
    """A ``worker -c 4`` (not burst) over N ready jobs; the tree's PSS once N/2 and N
    jobs are SUCCESSFUL (counted every 0.2 s), then it is stopped (SIGTERM)."""
    from django_tasks.models import Job

    tp.use_broker("database", os.environ["REDIS_URL"], os.environ["RABBITMQ_URL"])
    tp.fill_backlog(n)
    proc = subprocess.Popen([*tp.WORKER, "-c", "4"], cwd=tp.REPO, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120 + n / 200
        for fig, mark in ((half, n // 2), (full, n)):
            while Job.objects.filter(status="SUCCESSFUL").count() < mark:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker -c 4 stopped or stalled before {mark} jobs")
                time.sleep(0.2)
            pss, rss = tree_memory(proc.pid)
            fig.runs.append(pss / 2**20)
            print(f"memory after {mark:,} jobs: PSS {pss / 2**20:.0f} MB "
                  f"(RSS {rss / 2**20:.0f} MB)", flush=True)
    except RuntimeError as exc:
        print(f"  memory run failed: {exc}")
        for fig in (half, full):
            if len(fig.runs) < 1:
                fig.runs.append(None)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            print("  worker output:\n    " + output.strip().replace("\n", "\n    "))
    tp.truncate()


# -- the run -----------------------------------------------------------------------------

@dataclass
class Sizes:
    jobs: int  # N: each drain, bulk enqueue, Celery
    enqueue: int  # E: single enqueues
    latency: int  # jobs per latency run
    deep_ready: int
    deep_finished: int
    memory: int


FULL = Sizes(20_000, 2_000, 200, 1_000_000, 1_000_000, 100_000)
QUICK = Sizes(2_000, 300, 50, 100_000, 0, 5_000)


def run(args: argparse.Namespace, sizes: Sizes) -> list[tuple[Figure, dict]]:
    only, brokers, rounds, n = set(args.only), args.brokers, args.rounds, sizes.jobs
    tp.LATENCY_JOBS = sizes.latency
    figs: dict[tuple[str, str], Figure] = {}

    def fig(broker: str, key: str, label: str, unit: str, target: Target | None = None):
        return figs.setdefault((broker, key), Figure(f"{broker}: {label}", unit, target))

    def use(broker: str, extra: dict[str, object] | None = None) -> None:
        tp.use_broker(broker, args.redis_url, args.rabbitmq_url, extra)

    celery = "celery" in only
    if celery:
        celery_python()
        print(f"Celery side by side: {celery_version()}", flush=True)
    for r in range(1, rounds + 1):
        say = functools.partial(print, f"round {r}/{rounds}", flush=True)
        for broker in brokers:
            use(broker)
            if "enqueue" in only:
                f = fig(broker, "enqueue", "enqueue, 1 producer, autocommit", "jobs/s")
                measure_enqueue(f, broker, sizes.enqueue)
                say(f"{broker} enqueue: {tp.fmt(f.runs[-1], 'jobs/s')}")
                # The same with the option that trades the last moments' enqueues on a
                # crash of PostgreSQL for not waiting for the disk (a row of its own:
                # the target is for durable enqueues).
                use(broker, {"ASYNCHRONOUS_COMMIT": True})
                f = fig(broker, "enqueue async", "enqueue, ASYNCHRONOUS_COMMIT", "jobs/s")
                measure_enqueue(f, broker, sizes.enqueue)
                use(broker)
                say(f"{broker} enqueue, ASYNCHRONOUS_COMMIT: {tp.fmt(f.runs[-1], 'jobs/s')}")
            if "bulk" in only:
                f = fig(broker, "bulk", f"bulk enqueue, {n:,} jobs", "jobs/s",
                        Target(">=", 50_000, "jobs/s"))
                measure_bulk(f, broker, n)
                say(f"{broker} bulk enqueue: {f.note or tp.fmt(f.value(), 'jobs/s')}")
            if "drain" in only:
                f = fig(broker, "drain", f"drain {n:,}, 1 worker -c 2", "jobs/s")
                say(f"{broker} drain, 1 worker: {measure_drain(f, broker, n)}")
                f = fig(broker, "startup", "worker start-up + exit, empty queue", "s CPU")
                say(f"{broker} start-up: {measure_startup(f, broker)}")
        if celery:
            say("celery: " + measure_celery(
                fig("celery+redis", "enqueue", "enqueue, .delay()", "jobs/s"),
                fig("celery+redis", "drain", f"drain {n:,}, -c 2, results off", "jobs/s"),
                n, args.celery_redis_url, results=False))
        if "workers" in only:
            for k in (2, 4):
                for broker in brokers:
                    use(broker)
                    f = fig(broker, f"drain {k}", f"drain {n:,}, {k} workers at once", "jobs/s")
                    say(f"{broker} drain, {k} workers: {measure_drain(f, broker, n, k)}")
        if "latency" in only:
            for broker in brokers:
                use(broker)
                say(f"{broker} latency: " + measure_latency(
                    fig(broker, "p50", "latency enqueue->start p50", "ms",
                        Target("<=", 1.5, "ms")),
                    fig(broker, "p99", "latency enqueue->start p99", "ms"), broker))
        if celery:
            say("celery, results in Redis: " + measure_celery(
                fig("celery+redis", "enqueue", "enqueue, .delay()", "jobs/s"),
                fig("celery+redis", "drain results", f"drain {n:,}, -c 2, Redis results",
                    "jobs/s"),
                n, args.celery_redis_url, results=True))
    if "deep" in only:
        measure_deep(fig("database", "deep", f"deep queue: drain {n:,} of "
                         f"{sizes.deep_ready:,} ready", "jobs/s"),
                     n, sizes.deep_ready, sizes.deep_finished, rounds)
    if "memory" in only:
        half = fig("database", "memory half", f"worker -c 4 PSS after {sizes.memory // 2:,} jobs",
                   "MB")
        full = fig("database", "memory", f"worker -c 4 PSS after {sizes.memory:,} jobs", "MB",
                   Target("<=", 250, "MB"))
        measure_memory(half, full, sizes.memory)
    tp.truncate()
    return assemble(figs, brokers)


def assemble(figs: dict[tuple[str, str], Figure], brokers: Sequence[str]
             ) -> list[tuple[Figure, dict]]:
    """The table's rows in order, the ratio rows computed from the medians."""
    rows: list[tuple[Figure, dict]] = []
    plain: dict = {}
    celery_enqueue = figs.get(("celery+redis", "enqueue"))
    celery_drain = figs.get(("celery+redis", "drain"))
    for broker in brokers:
        on_server = {"server": broker != "database"}

        def add(key: str, cells: dict = plain, b: str = broker) -> Figure | None:
            f = figs.get((b, key))
            if f is not None:
                rows.append((f, cells))
            return f

        enqueue = add("enqueue", on_server)
        if enqueue and celery_enqueue:
            rows.append((ratio(f"{broker}: enqueue / Celery .delay()", enqueue, celery_enqueue,
                               Target(">=", 0.9, "x")), plain))
        unsafe = add("enqueue async", on_server)
        if unsafe and celery_enqueue:
            rows.append((ratio(f"{broker}: enqueue, ASYNCHRONOUS_COMMIT / Celery", unsafe,
                               celery_enqueue, None), plain))
        add("bulk", on_server)
        one = add("drain", on_server)
        if one:
            total = Figure(f"{broker}: CPU per job, 1 worker, total", "µs",
                           Target("<=", 250, "µs"), [sum(one.cpu()) if one.cpus else None])
            share = Figure(f"{broker}: CPU per job, 1 worker, PostgreSQL", "µs",
                           Target("<=", 90, "µs"), [one.cpu().postgres if one.cpus else None])
            rows.extend([(total, plain), (share, plain)])
            if celery_drain:
                rows.append((ratio(f"{broker}: drain / Celery drain (results off)", one,
                                   celery_drain, Target(">=", 4, "x")), plain))
        add("startup")
        for k in (2, 4):
            many = add(f"drain {k}", on_server)
            if one and many and one.cpus and many.cpus:
                rows.append((ratio(
                    f"{broker}: PostgreSQL CPU per job, {k} workers / 1", many, one,
                    Target("<=", 1.3, "x") if k == 4 else None,
                    lambda f: f.cpu().postgres), plain))
        add("p50", on_server)  # its CPU: per job of the run, jobs one at a time
        add("p99")
    celery = {"postgres": False}
    for key in ("enqueue", "drain", "drain results"):
        f = figs.get(("celery+redis", key))
        if f is not None:
            rows.append((f, celery if key != "enqueue" else {}))
    deep = figs.get(("database", "deep"))
    if deep:
        rows.append((deep, {"server": False}))
        empty = figs.get(("database", "drain"))
        if empty:
            rows.append((ratio("database: deep queue / empty table (drain, 1 worker)", deep,
                               empty, Target(">=", 0.9, "x")), plain))
    half, full = figs.get(("database", "memory half")), figs.get(("database", "memory"))
    if half and full:
        rows.extend([(half, plain), (full, plain)])
        rows.append((ratio("database: worker memory, growth from half-way", full, half,
                           Target("<=", 1.1, "x")), plain))
    return rows


def describe_commit() -> str:
    """The commit measured, "+changes" if the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tp.REPO, capture_output=True,
                              text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small N, 1 round: a smoke check (under 2 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--jobs", type=int, help="N jobs per drain (default 20,000)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--brokers", default=",".join(tp.BROKERS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--database-url", default=tp.DEFAULT_URL, help="default %(default)s")
    parser.add_argument("--redis-url", default=tp.DEFAULT_REDIS_URL, help="default %(default)s")
    parser.add_argument("--rabbitmq-url", default=tp.DEFAULT_RABBITMQ_URL,
                        help="default %(default)s")
    parser.add_argument("--celery-redis-url", help="Celery's broker (default: --redis-url); "
                        "its keys celery*, _kombu*, unacked* are deleted before each run")
    cpu.add_postgres_cpu_option(parser)
    args = parser.parse_args()
    cpu.use_postgres_cpu(args.postgres_cpu)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if set(args.only) - set(FIGURES):
        parser.error(f"--only takes a comma-separated list of {', '.join(FIGURES)}")
    if not args.brokers or set(args.brokers) - set(tp.BROKERS):
        parser.error(f"--brokers takes a comma-separated list of {', '.join(tp.BROKERS)}")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.celery_redis_url = args.celery_redis_url or args.redis_url
    sizes = QUICK if args.quick else FULL
    if args.jobs:
        sizes.jobs = args.jobs

    tp.ensure_database(args.database_url)
    tp.setup_django(args.database_url)
    os.environ.update(REDIS_URL=args.redis_url, RABBITMQ_URL=args.rabbitmq_url)
    began = time.perf_counter()
    rows = run(args, sizes)

    from django.db import connection

    print()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"django_tasks bench at {describe_commit()}, {when}: "
          f"{len(os.sched_getaffinity(0))} CPU(s), load average {os.getloadavg()[1]:.1f} "
          f"(5 min), PostgreSQL {connection.pg_version // 10000}, N={sizes.jobs:,}, "
          f"{args.rounds} round(s), medians; CPU in µs per job; took "
          f"{time.perf_counter() - began:.0f} s")
    tp.print_table(HEADER, table_rows(rows))
    if args.quick:
        print(f"--quick: N = {sizes.jobs:,}, one round. A worker's start-up (~0.6 s of CPU) "
              "is then ~300 µs of each job's CPU and most of a drain's time, so the met? "
              "column says little: the targets are judged by a full run (make bench).")
    print()
    print("every run:")
    for fig, _ in rows:
        if len(fig.runs) > 1:
            print(f"  {fig.label}: " + ", ".join(fmt(v, fig.unit) for v in fig.runs))


if __name__ == "__main__":
    main()
