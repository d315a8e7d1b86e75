"""Helpers for tests that run real `manage.py worker` processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def start_worker(*args, env=None):
    """A `python -m django worker` subprocess on the test database, in its own session
    (so ``os.killpg(proc.pid, ...)`` reaches the supervisor and its children)."""
    return start_command("worker", *args, env=env)


def start_command(command, *args, env=None):
    """A `python -m django <command>` subprocess on the test database, as start_worker."""
    # PYTHONFAULTHANDLER: SIGABRT makes it print every thread's stack (kill_leftovers).
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONFAULTHANDLER": "1",
           "DJANGO_TASKS_TEST_DB_NAME": connection.settings_dict["NAME"], **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", command, *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    STARTED.append(proc)
    return proc


#: Processes started by the current test; ``kill_leftovers`` (an autouse fixture in
#: conftest.py) kills those still running when it ends, so a failed assertion never
#: leaves a worker behind (a stopped one holds the test database open, and the next
#: run cannot recreate it).
STARTED: list[subprocess.Popen] = []


def kill_leftovers() -> None:
    """Kill what is still running; a process that hung (a test timed out waiting for it)
    first prints where each of its threads was (faulthandler, on SIGABRT), shown with
    the test's captured output."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGABRT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out = proc.communicate(timeout=10)[0] if proc.stdout is not None else ""
            print(f"--- process {proc.pid} ({' '.join(proc.args[3:])}) was still running; "
                  f"its output, ending with its threads' stacks:\n{out}")
        elif proc.stdout is not None:
            proc.stdout.close()


def wait_for(predicate, timeout=20.0, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its truth."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for_killed_sessions() -> None:
    """After a ``kill -9`` of a worker: wait until PostgreSQL has ended its sessions.

    A backend finishes the statement it was given before it notices its client is gone,
    so a round trip sent just before the kill can still commit (a start recorded, jobs
    claimed) after the kill. A test that reads the jobs' states as the kill left them
    waits for this first; SQLite has no such afterlife."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        def others():
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND pid <> pg_backend_pid() "
                           "AND backend_type = 'client backend'")
            return cursor.fetchone()[0]

        assert wait_for(lambda: others() == 0, timeout=30), "sessions outlived the kill"
